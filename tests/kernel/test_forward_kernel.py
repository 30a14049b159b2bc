"""The forward filter on the real kernel, in a throwaway namespace with a
br_netfilter bridge: iptables FORWARD policy DROP as Docker 20.10-28 sets it,
secnet's DOCKER-USER rules flushed and back within a second (seen through
nftables notifications), and Docker 29's nftables mode with secnet's guard
table, which drops a bridge's traffic when its network's table is gone."""
from __future__ import annotations

import subprocess
import time

import pytest

from nsfixtures import BRIDGE, NET_ID, lab, only  # noqa: F401  (fixture)
from packets import netns, probe_tcp, sh
from plugin.enforce.hostfw.dockerfw import DockerFirewall
from plugin.enforce.hostfw.forward import ForwardFilter
from plugin.enforce.hostfw.nftguard import FAMILY, TABLE, NftGuard
from plugin.enforce.nftables.runner import NftRunner
from plugin.kernel import engine
from plugin.kernel.nftwatch import NftWatcher

WITHIN = 1.0


@pytest.fixture
def forward(lab):
    """A ForwardFilter and an NftWatcher whose threads live in the lab's namespace."""
    with netns(lab.host):
        fw = ForwardFilter(DockerFirewall(), NftGuard(NftRunner()), every=None).start()
        watcher = NftWatcher().start()  # socket and thread in lab.host
        watcher.subscribe(fw.trigger, fw.interested)
    try:
        yield fw
    finally:
        watcher.stop()
        fw.stop()


def in_lab(lab, fn, *args):
    with netns(lab.host):
        return fn(*args)


def waited(predicate) -> float:
    start = time.monotonic()
    while time.monotonic() - start < 5:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError("not repaired within 5 s")


def docker_user(lab) -> str:
    return lab.exec("iptables", "-S", "DOCKER-USER", check=False).stdout  # may be mid-rewrite


def policy(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    return web, api


def assert_policy(web, api):
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert probe_tcp(api, web.ip4, 8080) == "timeout"


@only("nftables")   # eBPF's fast path hands allowed east-west packets veth to veth: FORWARD never sees them
def test_forward_drop_needs_docker_user_and_a_flush_is_repaired(lab, forward):
    web, api = policy(lab)
    lab.exec("iptables", "-P", "FORWARD", "DROP")
    assert probe_tcp(web, api.ip4, 8080) == "timeout"  # Docker's DROP eats the bridge's traffic
    in_lab(lab, forward.ensure, BRIDGE, NET_ID)
    assert_policy(web, api)
    lab.exec("iptables", "-F", "DOCKER-USER")
    took = waited(lambda: docker_user(lab).count("secnet:" + NET_ID) == 4)
    print(f"DOCKER-USER flushed: back after {took * 1000:.0f} ms")
    assert took < WITHIN, f"DOCKER-USER back after {took:.2f} s"
    waited(lambda: forward.repairs >= 1)  # counted once the pass is over
    assert_policy(web, api)


def test_a_deleted_jump_to_docker_user_is_repaired(lab, forward):
    web, api = policy(lab)
    lab.exec("iptables", "-P", "FORWARD", "DROP")
    in_lab(lab, forward.ensure, BRIDGE, NET_ID)
    lab.exec("iptables", "-D", "FORWARD", "-j", "DOCKER-USER")
    took = waited(lambda: "-j DOCKER-USER" in lab.exec("iptables", "-S", "FORWARD").stdout)
    assert took < WITHIN
    waited(lambda: forward.repairs >= 1)
    assert_policy(web, api)


def test_nftables_engine_guard_table_fails_closed_and_is_repaired(lab, forward):
    web, api = policy(lab)
    in_lab(lab, forward.ensure, BRIDGE, NET_ID)
    facts = engine.facts_from({"Version": "29.0.0", "ApiVersion": "1.52"},
                              {"FirewallBackend": {"Driver": "nftables"}})
    in_lab(lab, forward.set_facts, facts)
    assert "secnet:" not in docker_user(lab)  # FORWARD policy ACCEPT: no iptables rules needed
    assert_policy(web, api)
    # secnet's network table gone: the guard drops the bridge's traffic (fail closed)
    lab.backend.remove_network(NET_ID)
    assert probe_tcp(web, api.ip4, 8080) == "timeout"
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    assert_policy(web, api)
    # the guard table itself deleted: back within a second
    lab.exec("nft", "delete", "table", FAMILY, TABLE)
    took = waited(lambda: lab.exec("nft", "list", "table", FAMILY, TABLE, check=False).returncode == 0)
    print(f"guard table deleted: back after {took * 1000:.0f} ms")
    assert took < WITHIN, f"guard table back after {took:.2f} s"
    lab.backend.remove_network(NET_ID)
    assert probe_tcp(web, api.ip4, 8080) == "timeout"


def test_nftables_engine_keeps_docker_user_while_forward_drops(lab, forward):
    web, api = policy(lab)
    lab.exec("iptables", "-P", "FORWARD", "DROP")
    facts = engine.facts_from({"Version": "29.0.0"}, {"FirewallBackend": {"Driver": "nftables"}})
    in_lab(lab, forward.set_facts, facts)
    in_lab(lab, forward.ensure, BRIDGE, NET_ID)
    assert docker_user(lab).count("secnet:" + NET_ID) == 4
    assert_policy(web, api)


def test_ipv6_under_a_forward_drop_passes_only_with_the_rules(lab, forward):
    # Docker 27+ turns ip6tables on by default and sets ip6tables FORWARD to DROP too.
    web, api = policy(lab)
    lab.exec("ip6tables", "-P", "FORWARD", "DROP")
    assert probe_tcp(web, api.ip6, 8080) == "timeout"
    in_lab(lab, forward.ensure, BRIDGE, NET_ID)
    for c in (web, api):  # the DROP also ate neighbour discovery: start it afresh
        c.ip_cmd("-6", "neigh", "flush", "all")
    assert probe_tcp(web, api.ip6, 8080) == "ok"
    assert probe_tcp(api, web.ip6, 8080) == "timeout"


def test_a_reload_that_flushes_and_deletes_every_filter_chain_is_repaired(lab, forward):
    # what firewalld's iptables backend does on `firewall-cmd --reload`
    web, api = policy(lab)
    lab.exec("iptables", "-P", "FORWARD", "DROP")
    in_lab(lab, forward.ensure, BRIDGE, NET_ID)
    # one iptables-restore of an empty filter table: every chain flushed, user chains deleted,
    # atomically (a repair must not slip in between a flush and a delete)
    subprocess.run(["ip", "netns", "exec", lab.host, "iptables-restore"], check=True, timeout=20,
                   input="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                         "COMMIT\n", text=True)
    took = waited(lambda: docker_user(lab).count("secnet:" + NET_ID) == 4
                  and "-j DOCKER-USER" in lab.exec("iptables", "-S", "FORWARD").stdout)
    print(f"filter table flushed and chains deleted: back after {took * 1000:.0f} ms")
    assert took < WITHIN
    assert_policy(web, api)
