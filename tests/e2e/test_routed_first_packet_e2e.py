"""The first connection between two subnets of one network is answered on its first SYN,
on both backends, IPv6 and IPv4 (issue: nd9; mechanism in bench/results/2026-11-30-nd9.md).

The host routes between a network's subnets. Before secnet wrote permanent neighbour
entries on the bridge, the host had to resolve the server's address first (an IPv6
neighbour solicitation, an ARP request, from the bridge), and for IPv6 on a fresh
network it could not for 1-2 s (the bridge's link-local address was still tentative):
the client sent its SYN again. Here a counter in the server's own namespace (nft,
ingress of its eth0) counts the SYNs of the first connection and every solicitation
from the bridge: one SYN, no solicitation. No timing is asserted.
"""
from __future__ import annotations

import ipaddress
import json

import pytest

import helpers as h

PORT = 8080
BACKENDS = ("nftables", "ebpf")


def two_subnet_network(created: list, backend: str, family: int) -> tuple:
    """A network with two subnets of ``family`` (IPv6: plus Docker's IPv4 one): (net, a, b)."""
    for _ in range(10):
        a, b = (h.pick_subnet6(), h.pick_subnet6()) if family == 6 else (h.pick_subnet4(), h.pick_subnet4())
        flags = ["--subnet", h.pick_subnet4(), "--ipv6"] if family == 6 else []
        name = h.unique("sn-route1")
        res = h.docker("network", "create", "-d", "secnet", *flags, "--subnet", a, "--subnet", b,
                       "-o", f"secnet.backend={backend}", "-o", f"secnet.allow=web->api:tcp/{PORT}",
                       name, check=False)
        if res.returncode == 0:
            net = h.Network(name=name, id=res.stdout.strip(), subnet=a)
            created.append(net)
            return net, a, b
        assert a == b or "overlap" in res.stderr, res.stderr
    raise AssertionError("no free pair of subnets")


def start(run_container, net, segment: str, subnet: str, family: int, cmd=None) -> h.Container:
    at = str(ipaddress.ip_network(subnet)[0x10])
    return run_container(net, segment, labels={"secnet.segment": segment}, cmd=cmd,
                         extra=["--ip6" if family == 6 else "--ip", at])


def count_arrivals(server: h.Container, bridge_mac: str) -> None:
    """Counters on the ingress of ``server``'s eth0: ``syns`` (SYNs to PORT) and
    ``solicits`` (neighbour solicitations and ARP requests sent by the bridge; not the
    bridge's duplicate address detection for its own link-local, from ::)."""
    script = f"""table netdev nd9count {{
  counter syns {{ }}
  counter solicits {{ }}
  chain ingress {{
    type filter hook ingress device "eth0" priority 0; policy accept;
    ether saddr {bridge_mac} ip6 saddr != :: icmpv6 type nd-neighbor-solicit counter name "solicits"
    ether saddr {bridge_mac} arp operation request counter name "solicits"
    tcp dport {PORT} tcp flags & (syn | ack) == syn counter name "syns"
  }}
}}
"""
    res = h.in_netns(server, "nft", "-f", "-", input=script)
    assert res.returncode == 0, res.stderr


def arrivals(server: h.Container) -> dict:
    res = h.in_netns(server, "nft", "-j", "list", "counters", "table", "netdev", "nd9count")
    assert res.returncode == 0, res.stderr
    return {o["counter"]["name"]: o["counter"]["packets"]
            for o in json.loads(res.stdout)["nftables"] if "counter" in o}


def bridge_entry(net: h.Network, address: str) -> dict:
    out = h.run(["ip", "-j", "neigh", "show", "dev", net.bridge, "to", address]).stdout
    found = json.loads(out or "[]")
    return found[0] if found else {}


@pytest.mark.parametrize("family", [6, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_first_routed_connection_is_answered_on_its_first_syn(run_container, backend, family):
    created: list = []
    try:
        net, a, b = two_subnet_network(created, backend, family)
        api = start(run_container, net, "api", b, family, cmd=h.listen_cmd(PORT))
        bridge_mac = h.link(net.bridge)["address"]
        count_arrivals(api, bridge_mac)
        web = start(run_container, net, "web", a, family, cmd=["sleep", "300"])
        dst = api.ip6 if family == 6 else api.ip
        assert h.tcp(web, dst, PORT, family), f"{web.name} -> {api.name} ({dst}) tcp/{PORT}"
        assert arrivals(api) == {"syns": 1, "solicits": 0}
        entry = bridge_entry(net, dst)
        mac = json.loads(h.in_netns(api, "ip", "-j", "link", "show", "dev", "eth0").stdout)[0]["address"]
        assert entry.get("lladdr") == mac and "PERMANENT" in entry.get("state", []), entry
    finally:
        for n in created:
            h.remove_network(n)


@pytest.mark.exclusive
@pytest.mark.parametrize("backend", BACKENDS)
def test_entries_come_back_after_a_daemon_restart(run_container, backend):
    created: list = []
    try:
        net, a, b = two_subnet_network(created, backend, 6)
        api = start(run_container, net, "api", b, 6)
        assert "PERMANENT" in bridge_entry(net, api.ip6).get("state", [])
        h.run(["ip", "neigh", "del", api.ip6, "dev", net.bridge])
        h.plugin_restart()
        h.wait_until(lambda: "PERMANENT" in bridge_entry(net, api.ip6).get("state", []),
                     what=f"the permanent entry of {api.ip6} on {net.bridge}")
    finally:
        for n in created:
            h.remove_network(n)
