"""North-south in a real kernel, on every backend: containers and another host
(the lab's outside namespace, routed through the host), the host itself, CIDR
rules, the egress default, published ports (the backend's own NAT) and
hairpin, internal networks, the host's loopback.

Expected verdicts come from ``segmentation.reference`` or are spelled out
from the contract, never from a backend's data.
"""
from __future__ import annotations

import socket

import pytest

from nsfixtures import BRIDGE, BRIDGE_MAC, GATEWAY4, GATEWAY6, HOST4, HOST6, OUTSIDE4, Container
from nsfixtures import drain, lab  # noqa: F401 (fixture)
from packets import (UDP_PORT, Sniffer, judge, ns_socket, outcomes, parallel, probe_addr, probe_tcp,
                     send_frame, tcp_syn_frame, udp4_frame)
from segmentation.reference import reference_allowed

pytestmark = pytest.mark.kernel

NS_RULES = ("web->10.237.0.0/24:tcp/8080 web->[fd00:237::/64]:udp/53 api->10.237.0.2:icmp "
            "10.237.0.0/24->db:tcp/5432 [fd00:237::2]->db:any")
GATEWAYS = {4: GATEWAY4, 6: GATEWAY6}   # the host's source address towards the network
NS_SERVICES = [(p, port, fam) for p, port in (("tcp", 8080), ("tcp", 5432), ("udp", 53), ("icmp", None))
               for fam in (4, 6)]
PUBLISHED = 18080
#: the host as a destination on the network's side: the bridge's gateway addresses
GATEWAY = Container(ns="", index=97, veth="", mac="", ip4=GATEWAY4, ip6=GATEWAY6)


@pytest.mark.parametrize("egress, mode", [("allow", "enforce"), ("deny", "enforce"), ("deny", "audit")])
def test_north_south_truth_table(lab, egress, mode):
    """Containers <-> another host and the host itself: CIDR rules, egress default,
    ingress restricted only for segments a CIDR-source rule names (audit: all pass)."""
    web, api, db = lab.add(3)
    segment = {web: "web", api: "api", db: "db"}
    lab.apply(NS_RULES, segment, egress=egress, mode=mode)
    outside, host = lab.outside, lab.host_box
    got = outcomes([(c, outside) for c in segment], NS_SERVICES)
    got.update(outcomes([(lab.outside, c) for c in segment] + [(host, c) for c in segment], NS_SERVICES))

    def expect(cell):
        s, d, proto, port, fam = cell
        src = ("segment", segment[s]) if s in segment else (
            "host", GATEWAYS[fam]) if s is host else ("addr", s.ip(fam))
        dst = ("segment", segment[d]) if d in segment else ("addr", d.ip(fam))
        ok = reference_allowed(lab.options, ("web", "api", "db", "default"), src, dst, proto, port)
        return "ok" if ok or mode == "audit" else "timeout"
    wrong = judge(got, expect)
    assert {"ok", "timeout"} <= set(got.values()) or mode == "audit"
    assert not wrong, f"{len(wrong)} of {len(got)} cells differ:\n" + "\n".join(wrong)


def test_the_host_reaches_segments_no_cidr_rule_names(lab):
    web, api = lab.add(2)
    lab.apply("10.99.0.0/16->api:tcp/8080", {web: "web", api: "api"}, "deny")
    cells = [(lab.host_box, c.ip(fam), "tcp", 8080) for c in (web, api) for fam in (4, 6)]
    assert parallel(probe_addr, cells) == ["ok", "ok", "timeout", "timeout"]


def test_egress_default_and_cidr_egress_rules(lab):
    web, api = lab.add(2)
    lab.apply("", {web: "web", api: "api"}, "deny")
    cells = [(web, GATEWAY4, "tcp", 9999), (web, GATEWAY6, "tcp", 9999), (api, GATEWAY4, "udp", 53)]
    assert parallel(probe_addr, cells) == ["ok", "ok", "ok"]
    lab.update(f"web->{GATEWAY4}/32:tcp/9999", egress="deny")
    cells = [(web, GATEWAY4, "tcp", 9999), (web, GATEWAY4, "tcp", 8080), (web, GATEWAY6, "tcp", 9999),
             (api, GATEWAY4, "tcp", 9999)]
    assert parallel(probe_addr, cells) == ["ok", "timeout", "timeout", "timeout"]
    lab.update(f"web->[{GATEWAY6}/128]:tcp/9999, api->10.236.0.0/24:udp/53", egress="deny")
    cells = [(web, GATEWAY6, "tcp", 9999), (web, GATEWAY4, "tcp", 9999), (api, GATEWAY4, "udp", 53),
             (api, GATEWAY6, "udp", 53)]
    assert parallel(probe_addr, cells) == ["ok", "timeout", "ok", "timeout"]
    assert lab.dropped("egress") > 0


def test_published_port_and_hairpin(lab):
    """A published port is reached from another host and from a member (hairpin),
    the container itself is not reached directly from outside."""
    web, api = lab.add(2)
    lab.apply("", {web: "web", api: "api"}, intra="deny", published={api: (("tcp", "", PUBLISHED, 8080),)})
    assert probe_tcp(lab.outside, HOST4, PUBLISHED) == "ok"
    assert probe_tcp(lab.outside, HOST6, PUBLISHED) == "ok"
    assert probe_tcp(lab.outside, api.ip4, 8080) == "timeout"
    assert probe_tcp(web, HOST4, PUBLISHED) == "timeout"     # hairpin: east-west, no rule (U12-F3)
    assert probe_tcp(web, api.ip4, 8080) == "timeout"        # nor directly
    assert probe_tcp(lab.host_box, api.ip4, 8080) == "ok"


def test_cidr_ingress_rules_restrict_a_segment_and_its_published_port(lab):
    web, api = lab.add(2)
    lab.apply("10.237.0.0/24->api:tcp/8080", {web: "web", api: "api"}, "deny",
              published={api: (("tcp", "", PUBLISHED, 8080),)})
    cells = [(lab.outside, api.ip4, "tcp", 8080), (lab.outside, api.ip4, "tcp", 5432),
             (lab.outside, HOST4, "tcp", PUBLISHED)]
    assert parallel(probe_addr, cells) == ["ok", "timeout", "ok"]
    lab.update("10.238.0.0/24->api:tcp/8080, 10.238.0.0/24->web:tcp/8080")
    assert parallel(probe_addr, cells) == ["timeout", "timeout", "timeout"]


#: a member reaching web's published port: through the gateway and through another
#: host address (the uplink's, U12-F4), IPv4 and IPv6
HAIRPIN_DSTS = (GATEWAY4, HOST4, GATEWAY6, HOST6)


@pytest.mark.parametrize("egress", ["allow", "deny"])
def test_a_hairpin_is_judged_as_east_west_on_the_container_port(lab, egress):
    """A member reaching a published port of its own network (U12-F3, U12-F4) is
    judged as east-west from its segment to the target's, on the container port:
    within the segment by intra, across only by a rule; else dropped (no-rule) and
    reported as the direct flow is (the target's address and port). The egress
    default and CIDR-source rules play no part; the outside still gets in."""
    web, web2, api = lab.add(3)
    segment = {web: "web", web2: "web", api: "api"}
    lab.apply("", segment, egress=egress, published={web: (("tcp", "", PUBLISHED, 8080),)})
    events = lab.drop_events()
    cells = [(c, dst, "tcp", PUBLISHED) for c in (web2, api) for dst in HAIRPIN_DSTS]
    # api's first probes end before TCP's first SYN retransmission (1 s): one SYN each, whatever the load
    first = [(c, dst, PUBLISHED, 1.5 if c is web2 else 0.6) for c, dst, _proto, _port in cells]
    expect = ["ok"] * 4 + ["timeout"] * 4
    assert parallel(probe_tcp, first) == expect, "intra passes, another segment without a rule does not"
    _assert_hairpin_counted(lab)
    dropped = [e for e in drain(events, 1.5) if e.src in (api.ip4, api.ip6)]
    assert dropped and all((e.reason, e.dst, e.port) in (("no-rule", web.ip4, 8080), ("no-rule", web.ip6, 8080))
                           for e in dropped), f"api's hairpin drops, as the direct flow's: {dropped}"
    assert probe_tcp(lab.outside, HOST4, PUBLISHED) == "ok"     # from outside: as before
    # a CIDR-source rule naming api's addresses, or a rule for the host port, opens nothing
    lab.update("10.236.0.0/24->web:tcp/8080, [fd00:236::/64]->web:tcp/8080, api->web:tcp/18080",
               egress=egress)
    assert parallel(probe_addr, cells[4:]) == ["timeout"] * 4
    lab.update("api->web:tcp/8080", egress=egress)
    assert parallel(probe_addr, cells[4:]) == ["ok"] * 4, "an east-west rule on the container port lets it"
    lab.update("api->web:tcp/8080", intra="deny", egress=egress)
    assert parallel(probe_addr, cells) == ["timeout"] * 4 + ["ok"] * 4, "intra=deny: not within web"


def _assert_hairpin_counted(lab) -> None:
    """U12-F5 (a): `show`'s pair counters and the metrics (both from ``per_pair``) count
    the hairpin flows as the direct ones: web2's 4 flows opened once each in web->web
    (two IPv4 SYNs of 60 bytes, two IPv6 SYNs of 80: the first packet of a flow), api's
    SYNs (one each: the probes end before the first retransmission) dropped in api->web."""
    from plugin.observe.counting import per_pair   # noqa: PLC0415
    allowed, dropped, _would = per_pair(lab.policy, lab.counters())
    assert allowed[("web", "web")] == [4, 2 * 60 + 2 * 80], dict(allowed)
    assert dropped[("api", "web")] == [4, 2 * 60 + 2 * 80], dict(dropped)
    assert [p for p in dropped if p != ("api", "web")] == [], dict(dropped)


def test_internal_network_keeps_everything_inside(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, internal=True)
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert probe_tcp(web, OUTSIDE4, 8080) == "timeout"
    assert probe_tcp(web, GATEWAY4, 9999) == "timeout"
    assert probe_tcp(lab.outside, api.ip4, 8080) == "timeout"
    assert probe_tcp(lab.host_box, api.ip4, 8080) == "timeout"
    assert lab.dropped("internal") > 0


def test_the_hosts_loopback_stays_the_hosts(lab):
    """route_localnet on the bridge (for published loopback ports) must not let a
    container reach 127.0.0.1 of the host: dropped as invalid."""
    web, api = lab.add(2)
    lab.exec("sysctl", "-qw", f"net.ipv4.conf.{BRIDGE}.route_localnet=1")
    lab.apply("", {web: "web", api: "api"})
    sniffer = Sniffer(web)
    try:
        send_frame(web, udp4_frame(web, BRIDGE_MAC, web.ip4, GATEWAY4, 53, b"to-the-gateway", 40000))
        send_frame(web, udp4_frame(web, BRIDGE_MAC, web.ip4, "127.0.0.1", 53, b"to-loopback", 40000))
        frames = sniffer.frames(0.5)
    finally:
        sniffer.close()
    assert any(b"to-the-gateway" in f for f in frames)        # the control: the host echoes
    assert not any(b"to-loopback" in f for f in frames)
    assert lab.dropped("loopback") >= 1


def test_a_loopback_published_port_is_reported_as_sent(lab):
    """U12-F5 (c): a member's SYN to 127.0.0.1:P, P published on 127.0.0.1 for another
    member, is dropped and reported on both backends as sent (127.0.0.1, the host port)
    with the reason ``loopback``; before, nftables said ``invalid`` and eBPF named the
    member behind the port. To ::1 too (the host's IPv6 stack drops it before any
    netfilter hook: nftables reported nothing, eBPF ``invalid``)."""
    web, api = lab.add(2)
    lab.exec("sysctl", "-qw", f"net.ipv4.conf.{BRIDGE}.route_localnet=1")
    lab.apply("api->web:tcp/8080", {web: "web", api: "api"},
              published={web: (("tcp", "127.0.0.1", PUBLISHED, 8080),)})
    events = lab.drop_events()
    sniffer = Sniffer(web)
    try:
        for sport in (40001, 40002):
            send_frame(api, tcp_syn_frame(api, BRIDGE_MAC, "127.0.0.1", PUBLISHED, sport))
        send_frame(api, tcp_syn_frame(api, BRIDGE_MAC, "::1", PUBLISHED))
        reached = [f for f in sniffer.frames(0.5) if f[12:14] == b"\x08\x00" and f[23] == 6]
    finally:
        sniffer.close()
    assert reached == [], "a SYN to 127.0.0.1 reached the member behind the loopback port"
    got = {(e.reason, e.src, e.dst, e.port) for e in drain(events, 1.0) if e.src in (api.ip4, api.ip6)}
    assert got == {("loopback", api.ip4, "127.0.0.1", PUBLISHED), ("loopback", api.ip6, "::1", PUBLISHED)}, got
    assert lab.dropped("loopback") == 3 and lab.dropped("invalid") == 0


def test_cidr_rules_count_the_flows_they_allow(lab):
    """`secnet show`'s per-rule counters (observe.counting) find the packets of flows that
    CIDR rules allowed, egress and ingress, as they do for east-west rules."""
    from plugin.observe.counting import per_rule   # noqa: PLC0415
    web, api = lab.add(2)
    egress, ingress = "web->10.237.0.0/24:tcp/8080", "10.237.0.0/24->api:tcp/8080"
    lab.apply(f"{egress}, {ingress}", {web: "web", api: "api"}, "deny", egress="deny")
    assert probe_tcp(web, OUTSIDE4, 8080) == "ok"
    assert probe_tcp(lab.outside, api.ip4, 8080) == "ok"
    counted = per_rule(lab.policy, lab.counters())
    assert counted[egress][0] >= 1 and counted[ingress][0] >= 1, counted



def _unlearned(lab, c) -> None:
    """The bridge never learns ``c``'s MAC: every frame for it is flooded to all ports
    (as for a container that replaced another and has not sent yet)."""
    lab.exec("bridge", "link", "set", "dev", c.veth, "learning", "off")
    lab.exec("bridge", "fdb", "del", c.mac, "dev", c.veth, "master", check=False)


def _udp_flow(src, dst: str, port: int) -> socket.socket:
    """One UDP flow from ``src`` (one socket, one source port); see _exchanges."""
    s = ns_socket(src.ns, socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    s.connect((dst, port))
    return s


def _exchanges(s: socket.socket, count: int = 3) -> list:
    """Outcome of each of ``count`` echoed datagrams on the flow ``s``."""
    got = []
    for i in range(count):
        token = b"f4-%d" % i
        try:
            s.send(token)
            got.append("ok" if s.recv(2048) == token else "garbled")
        except socket.timeout:
            got.append("timeout")
        except PermissionError:      # the host's own packet, dropped in its output hook
            got.append("timeout")
    return got


def _udp_stream(src, dst: str, port: int, count: int = 3) -> list:
    with _udp_flow(src, dst, port) as s:
        return _exchanges(s, count)


def test_a_flooded_copy_does_not_open_a_flow_into_a_restricted_segment(lab):
    """Finding F4: the bridge floods a frame for a MAC it has not learned to every port;
    the copy at a member of an unrestricted segment must not admit the flow for its real
    destination, a member of a segment a CIDR-source rule restricts (from the host, or
    from another host through a published port). The unrestricted member is reached."""
    web, api = lab.add(2)
    lab.apply("10.238.0.0/24->api:tcp/8080", {web: "web", api: "api"}, "deny",
              published={api: (("udp", "", PUBLISHED, UDP_PORT),),
                         web: (("udp", "", PUBLISHED + 1, UDP_PORT),)})
    for c in (web, api):
        _unlearned(lab, c)
    assert _udp_stream(lab.host_box, api.ip4, UDP_PORT) == ["timeout"] * 3
    assert _udp_stream(lab.outside, HOST4, PUBLISHED) == ["timeout"] * 3
    assert _udp_stream(lab.host_box, web.ip4, UDP_PORT) == ["ok"] * 3
    assert _udp_stream(lab.outside, HOST4, PUBLISHED + 1) == ["ok"] * 3


def test_a_frame_for_another_members_address_opens_no_flow(lab):
    """A frame that reaches an unrestricted member's port with its MAC but a restricted
    member's address (the host's neighbour entry is stale: a replaced container's MAC)
    is not that member's to judge: once the entry is right, the flow does not pass."""
    web, api = lab.add(2)
    lab.apply("10.238.0.0/24->api:tcp/8080", {web: "web", api: "api"}, "deny")
    def neighbour(mac: str) -> None:
        lab.exec("ip", "neigh", "replace", api.ip4, "lladdr", mac, "dev", BRIDGE, "nud", "permanent")
    try:
        neighbour(web.mac)
        with _udp_flow(lab.host_box, api.ip4, UDP_PORT) as flow:
            first = _exchanges(flow, 2)
            neighbour(api.mac)
            then = _exchanges(flow, 2)
    finally:
        neighbour(api.mac)
    assert (first, then) == (["timeout"] * 2, ["timeout"] * 2)
    assert _udp_stream(lab.host_box, web.ip4, UDP_PORT) == ["ok"] * 3    # the control
