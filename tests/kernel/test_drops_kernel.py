"""Drops reported by the kernel (NFLOG for nftables, a BPF ring buffer for eBPF) and
delivered as DropEvents by the backend, with the same fields and the same per-flow
rate limit on both; and plugin.probes' real packets. Every test runs on each
backend of the lab."""
from __future__ import annotations

import socket
import struct
import time

import pytest

from nsfixtures import NET_ID, OUTSIDE4, drain, lab  # noqa: F401  (lab is a fixture)
from packets import Sniffer, arp_frame, ns_socket, send_frame, udp4_frame
from plugin.observe import probes

pytestmark = pytest.mark.kernel


@pytest.fixture
def events(lab):
    """DropEvents of the lab's backend, as a queue."""
    return lab.drop_events()


def send_udp(box, dst: str, port: int, count: int = 1, family=socket.AF_INET) -> None:
    with ns_socket(box.ns, family, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x", (dst, port))


def test_a_dropped_flow_is_reported_once_per_second(lab, events):
    web, api, db = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api", db: "db"})
    send_udp(web, api.ip4, 5432, count=1)     # warms the neighbour cache (and is itself reported)
    drain(events, 0.5)
    sent = time.time()
    send_udp(web, db.ip4, 5432, count=20)     # one flow, twenty packets
    send_udp(web, db.ip4, 5433)               # another flow
    send_udp(web, db.ip6, 5432, family=socket.AF_INET6)
    got = [e for e in drain(events, 1.0) if e.proto == 17]
    assert sorted((e.family, e.port) for e in got) == [(4, 5432), (4, 5433), (6, 5432)], got
    event = next(e for e in got if e.port == 5432 and e.family == 4)
    assert event.network.startswith(NET_ID[:12])
    assert (event.reason, event.audit) == ("no-rule", False)
    assert (event.src, event.dst, event.ifname) == (web.ip4, db.ip4, web.veth)
    assert event.time - sent < 0.5
    time.sleep(1.1)
    send_udp(web, db.ip4, 5432, count=5)      # a second later: reported again, once
    assert [e.port for e in drain(events, 0.7) if e.proto == 17] == [5432]


def test_bridge_table_drops_are_reported_with_their_reason(lab, events):
    web, api, bad = lab.add(3)
    lab.apply("*->*", {web: "web", api: "api"})
    lab.move(bad, None, quarantine="empty label")
    send_udp(bad, api.ip4, 53)
    send_frame(web, udp4_frame(web, "ff:ff:ff:ff:ff:ff", "10.236.0.250", api.ip4, 7, b"x"))
    got = drain(events, 1.0)
    assert {"quarantined", "spoofed"} <= {e.reason for e in got}, got
    spoofed = next(e for e in got if e.reason == "spoofed" and e.family == 4)
    assert (spoofed.src, spoofed.port, spoofed.ifname) == ("10.236.0.250", 7, web.veth)
    assert any(e.ifname == bad.veth for e in got if e.reason == "quarantined")


def test_a_frame_of_another_ethertype_is_reported_as_nftables_reports_it(lab, events):
    """Family 0, no addresses, proto ``ethertype-0x88b5`` on both backends (U12-F5 b:
    eBPF reported the MAC addresses as addresses and the ethertype as a bare number)."""
    web, api = lab.add(2)
    lab.apply("*->*", {web: "web", api: "api"})
    drain(events, 0.3)
    for dst in (api.mac, "ff:ff:ff:ff:ff:ff"):
        frame = bytes.fromhex(dst.replace(":", "") + web.mac.replace(":", "")) + b"\x88\xb5" + b"U12MARK" * 8
        send_frame(web, frame)
    got = [e for e in drain(events, 1.0) if e.reason == "ethertype"]
    assert got, "no ethertype drop reported"
    assert {(e.family, e.proto, e.src, e.dst, e.port, e.ifname) for e in got} == {
        (0, "ethertype-0x88b5", "", "", None, web.veth)}, got
    # 802.1Q: the receiving kernel moves the tag into the skb's metadata (skb_vlan_untag), so
    # both report the type after the tag -- here the payload's "2M"; nftables read the
    # payload's "ARK..." as an IPv4 header (protocol 75) before
    tagged = bytes.fromhex(api.mac.replace(":", "") + web.mac.replace(":", "")) + b"\x81\x00" + b"U12MARK" * 8
    send_frame(web, tagged)
    got = [e for e in drain(events, 1.0) if e.reason == "ethertype"]
    assert [(e.family, e.proto, e.src, e.dst) for e in got] == [(0, "ethertype-0x324d", "", "")], got


def _tagged(frame: bytes, vid: int = 5) -> bytes:
    """``frame`` with an 802.1Q tag (VLAN ``vid``) after its MAC addresses."""
    return frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]


def test_a_tagged_frame_is_dropped_as_ethertype(lab, events):
    """802.1Q: a member's tagged frame whose inner IPv4 (a flow the policy allows and
    already passed, so eBPF's fast path knows it) or ARP would pass untagged is dropped
    as ``ethertype`` on both backends: secnet networks carry no VLANs. Before, eBPF
    judged the inner packet (the receiving veth moves the tag into skb->vlan_tci) and
    delivered it; nftables' ``ether type`` sees 0x8100."""
    web, api = lab.add(2)
    lab.apply("*->*", {web: "web", api: "api"})
    sniffer = Sniffer(api)
    try:
        for mark in (b"UNTAGGED-1", b"UNTAGGED-2"):   # the flow (not DNS: eBPF's fast path takes it)
            send_frame(web, udp4_frame(web, api.mac, web.ip4, api.ip4, 7000, mark))
            time.sleep(0.1)
        drain(events, 0.3)
        send_frame(web, _tagged(udp4_frame(web, api.mac, web.ip4, api.ip4, 7000, b"TAGGED-IP")))
        send_frame(web, _tagged(arp_frame(web.mac, web.ip4, api.ip4, op=1)))
        frames = sniffer.frames(0.6)
    finally:
        sniffer.close()
    assert any(b"UNTAGGED-2" in f for f in frames), "the control did not arrive"
    assert not any(b"TAGGED-IP" in f or (f[12:14] == b"\x81\x00" and f[16:18] == b"\x08\x06")
                   for f in frames), "a tagged frame reached the other member"
    got = {(e.reason, e.family, e.proto, e.src, e.dst, e.ifname) for e in drain(events, 1.0)}
    assert got == {("ethertype", 4, 17, web.ip4, api.ip4, web.veth),
                   ("ethertype", 4, "arp", web.ip4, api.ip4, web.veth)}, got
    assert lab.dropped("ethertype") == 2


def test_probes_observe_what_the_policy_lets_through(lab):
    web, api, db = lab.add(3)
    lab.apply("web->api:tcp/8080 web->api:udp/53 *->db:icmp", {web: "web", api: "api", db: "db"},
              intra="deny")
    cases = [("tcp", api, 8080, 4, True), ("tcp", api, 8080, 6, True), ("tcp", api, 5432, 4, False),
             ("udp", api, 53, 4, True), ("udp", api, 54, 4, False), ("udp", api, 53, 6, True),
             ("icmp", db, None, 4, True), ("icmp", db, None, 6, True), ("icmp", api, None, 4, False)]
    path = f"/run/netns/{web.ns}"
    specs = [probes.Spec(i, proto, fam, path, web.ip(fam), f"/run/netns/{dst.ns}", dst.ip(fam), port)
             for i, (proto, dst, port, fam, _want) in enumerate(cases)]
    outcome = probes.Session(specs, timeout=0.5).run()
    got = {i: probes.reached(outcome[i]) for i in range(len(cases))}
    want = {i: c[-1] for i, c in enumerate(cases)}
    assert got == want, {i: (cases[i], outcome[i]) for i in got if got[i] != want[i]}


def test_a_drop_on_the_way_in_names_the_port_it_came_in_on(lab, events):
    """A flow dropped on its way into a container is reported with the port (or
    uplink) it came in on, as nft's iifname, never the receiving container's port:
    the log names the sender, not the receiver (eBPF judges it at that port)."""
    web, api = lab.add(2)
    lab.apply("10.238.0.0/24->api:udp/53", {web: "web", api: "api"})   # restricts api's ingress
    send_udp(web, api.ip4, 5432)                     # east-west, no rule
    send_udp(lab.outside, api.ip4, 53)               # north-south, no CIDR rule names its source
    got = [e for e in drain(events, 1.0) if e.proto == 17 and e.dst == api.ip4]
    east = next(e for e in got if e.src == web.ip4)
    north = next(e for e in got if e.src == OUTSIDE4)
    assert (east.reason, east.ifname) == ("no-rule", web.veth), east
    assert north.reason == "no-rule" and north.ifname != api.veth, north
