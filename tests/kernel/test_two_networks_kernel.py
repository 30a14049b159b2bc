"""Two networks on one host: each network's frames are judged by its own rules, on every backend.

Kernel background. Netfilter base chains are per namespace, not per bridge:
the bridge-family chains of network B's table (``ports_in`` on prerouting,
``ports_fwd`` on forward) and the inet chains of its table (``forward``, via
br_netfilter) run for network A's frames too, and let them go at their first
rule; a drop in A's table is final whatever B's table says (an ``accept``
ends one table's base chain only). So every frame pays for every network's
tables (bench/nft_guard.py measures it), and any shortcut that lets a frame
skip another network's tables must never let through what a table drops:

* each network keeps its own policy while the other exists (both ways);
* a pending container of A is still cut off;
* A's port moved onto B's bridge is still judged by A: its frames are A's
  to judge wherever the port is (nftables: A's ``veths``, and the port's
  interface group, which moves with it; eBPF: the programs sit on the port
  itself), so a pending port's ARP never reaches B's containers, while a
  member of B sends the same frame through;
* nftables: a port taken out of its network's interface group (which lets
  frames of other bridges skip the bridge table on one compare:
  ``plugin.enforce.nftables.portlinks``) is drift, and the repair puts it back.

Network B: bridge ``snbr1``, 10.234.0.0/24 and fd00:234::/64, two containers.
"""
from __future__ import annotations

import contextlib

import pytest

from nsfixtures import BRIDGE, Container, _options, only
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import Sniffer, arp_frame, probe_tcp, send_frame, sh
from plugin.enforce.backend import NetworkSpec, Port
from plugin.kernel.links import port_group
from segmentation.identities import MemoryAllocator
from segmentation.policymap import compile_policy_map

pytestmark = pytest.mark.kernel
NET_B, BRIDGE_B = "5ec0b2" + "0" * 58, "snbr1"
GATEWAY_B4, GATEWAY_B6 = "10.234.0.1", "fd00:234::1"


def _container_b(lab, i: int) -> Container:
    host = 10 + i
    c = Container(ns=f"{lab.host}-b{i}", index=50 + i, veth=f"snw{i}", mac=f"02:42:0a:ea:00:{host:02x}",
                  ip4=f"10.234.0.{host}", ip6=f"fd00:234::{host:x}")
    lab._add_ns(c.ns)   # deleted with the lab's namespaces, also when the test fails
    sh("ip", "-n", lab.host, "link", "add", c.veth, "type", "veth", "peer", "name", "eth0", "netns", c.ns)
    sh("ip", "-n", lab.host, "link", "set", c.veth, "master", BRIDGE_B, "up")
    lab._address(c, GATEWAY_B4, GATEWAY_B6)
    lab.responder.listen(c)
    return c


@contextlib.contextmanager
def network_b(lab, rules: str, segments: dict):
    """Network B with ``rules`` over its containers (``segments``: index -> segment), applied
    by the lab's backend next to network A; yields its containers; removed at the end."""
    sh("ip", "-n", lab.host, "link", "add", BRIDGE_B, "type", "bridge")
    sh("ip", "-n", lab.host, "addr", "add", f"{GATEWAY_B4}/24", "dev", BRIDGE_B)
    sh("ip", "-n", lab.host, "addr", "add", f"{GATEWAY_B6}/64", "dev", BRIDGE_B, "nodad")
    sh("ip", "-n", lab.host, "link", "set", BRIDGE_B, "up")
    boxes = [_container_b(lab, i) for i in sorted(segments)]
    options = _options(rules, "allow", {})
    ids = MemoryAllocator().allocate(NET_B, set(segments.values()) | {options.default_segment})
    ports = [Port(endpoint_id=f"eb{c.index}", name=c.veth, mac=c.mac, ipv4=c.ip4, ipv6=c.ip6,
                  identity=ids[segments[i]], segment=segments[i]) for i, c in zip(sorted(segments), boxes)]
    net = NetworkSpec(NET_B, BRIDGE_B, ("10.234.0.0/24", "fd00:234::/64"), (GATEWAY_B4, GATEWAY_B6))
    lab.backend.apply_network(net, compile_policy_map(options, ids), ports)
    try:
        yield boxes
    finally:
        lab.backend.remove_network(NET_B)


def test_each_network_keeps_its_own_policy_while_the_other_exists(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    with network_b(lab, "x->y:tcp/8080", {0: "x", 1: "y"}) as (x, y):
        for family in ("ip4", "ip6"):
            assert probe_tcp(web, getattr(api, family), 8080) == "ok"
            assert probe_tcp(api, getattr(web, family), 8080) == "timeout"   # A's rules, B present
            assert probe_tcp(x, getattr(y, family), 8080) == "ok"
            assert probe_tcp(y, getattr(x, family), 8080) == "timeout"       # B's rules, A present
    assert probe_tcp(api, web.ip4, 8080) == "timeout"                        # and after B is gone


def test_a_pending_container_stays_cut_off_while_another_network_exists(lab):
    web, bad = lab.add(2)
    lab.apply("*->*", {web: "web"}, extra_ports=[lab.port(bad)])           # bad: pending
    with network_b(lab, "*->*", {0: "x"}):
        assert probe_tcp(web, bad.ip4, 8080) == "timeout"
        assert probe_tcp(bad, web.ip4, 8080) == "timeout"
        assert probe_tcp(bad, web.ip6, 8080) == "timeout"


def test_a_port_moved_to_another_networks_bridge_is_still_judged_by_its_own(lab):
    web, bad = lab.add(2)
    lab.apply("*->*", {web: "web"}, extra_ports=[lab.port(bad)])           # bad: pending in A
    with network_b(lab, "*->*", {0: "x", 1: "y"}) as (x, y):
        sh("ip", "-n", lab.host, "link", "set", bad.veth, "master", BRIDGE_B)
        sniff = Sniffer(x)
        try:
            # the same broadcast ARP, each sender with its own MAC and address (not spoofed)
            send_frame(y, arp_frame(y.mac, y.ip4, "10.234.0.99", op=1))
            send_frame(bad, arp_frame(bad.mac, bad.ip4, "10.234.0.99", op=1))
            seen = [f[6:12] for f in sniff.frames(1.0) if f[12:14] == b"\x08\x06"]
        finally:
            sniff.close()
        assert bytes.fromhex(y.mac.replace(":", "")) in seen, "the positive control did not arrive"
        assert bytes.fromhex(bad.mac.replace(":", "")) not in seen, "a pending port's frame got out on B"


@only("nftables")
def test_a_port_taken_out_of_its_group_is_drift_and_the_repair_puts_it_back(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    group = port_group(BRIDGE)
    assert _group(lab, api.veth) == group                   # the backend put the lab's ports in
    assert lab.drift() == []
    sh("ip", "-n", lab.host, "link", "set", api.veth, "group", "0")
    assert any(f"port {api.veth}: interface group 0x0" in p for p in lab.drift())
    lab.repair()
    assert _group(lab, api.veth) == group and lab.drift() == []
    assert probe_tcp(api, web.ip4, 8080) == "timeout"         # judged by its network again


def _group(lab, name: str) -> int:
    out = sh("ip", "-n", lab.host, "-d", "link", "show", "dev", name).stdout
    return int(out.split(" group ", 1)[1].split()[0], 0)
