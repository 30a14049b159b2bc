"""Packets that are no flow's first packet (U14-F3, U14-F4): what may open a flow, and how
the rest is dropped, counted and logged -- the same on both backends.

nftables leaves it to the kernel's conntrack: a packet conntrack cannot start an entry
with has no state and is dropped by secnet's ``ct state invalid`` rule. For TCP that is
conntrack's first-packet table (Linux net/netfilter/nf_conntrack_proto_tcp.c:
``tcp_valid_flags`` and ``tcp_conntracks[0][..][TCP_CONNTRACK_NONE]``): a SYN opens;
an ACK (PSH, URG allowed) opens too while ``nf_conntrack_tcp_loose`` is 1 (the
default: conntrack picks up a flow in its middle); SYN|ACK, RST, FIN and flag
combinations that are never valid (SYN|FIN, none) open nothing. Every segment here
carries a correct checksum: conntrack drops a wrong one as invalid, whatever its flags
(nf_conntrack_checksum), which eBPF cannot tell (docs/ebpf.md Known gaps).
"""
from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from nsfixtures import drain, lab  # noqa: F401  (lab is a fixture)
from packets import Sniffer, ns_socket
from plugin.kernel.icmp import checksum
from plugin.observe.droplog import proto_name

pytestmark = pytest.mark.kernel

SYN, FIN, RST, PSH, ACK, URG = 0x02, 0x01, 0x04, 0x08, 0x10, 0x20


def tcp_segment(src: str, dst: str, sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    """A TCP header (+ ``data``) with its checksum over the pseudo-header of ``src``/``dst``
    (RFC 9293 3.1; RFC 8200 8.1 for IPv6), for a raw IPPROTO_TCP socket."""
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, flags, 8192, 0, 0) + data
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(a) == 4:
        pseudo = a + b + struct.pack("!BBH", 0, 6, len(seg))
    else:
        pseudo = a + b + struct.pack("!I3xB", len(seg), 6)
    return seg[:16] + struct.pack("!H", checksum(pseudo + seg)) + seg[18:]


def send_tcp(box, dst, family: int, sport: int, dport: int, flags: int, data: bytes = b"") -> None:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with ns_socket(box.ns, af, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
        raw.sendto(tcp_segment(box.ip(family), dst.ip(family), sport, dport, flags, data),
                   (dst.ip(family), 0))


def arrived_ports(frames, family: int) -> set:
    """Source ports of the TCP segments among ``frames`` (Ethernet, no IP options)."""
    et, at = (b"\x08\x00", 14 + 20) if family == 4 else (b"\x86\xdd", 14 + 40)
    proto_at = 14 + 9 if family == 4 else 14 + 6
    return {struct.unpack_from("!H", f, at)[0] for f in frames
            if f[12:14] == et and f[proto_at] == 6}


#: flags -> does conntrack (nf_conntrack_tcp_loose=1, the lab's default) let it open a flow
FIRST = {SYN: True, SYN | URG: True, ACK: True, PSH | ACK: True, ACK | URG: True,
         SYN | 0x40 | 0x80: True,                       # SYN with ECE and CWR (ECN setup)
         SYN | ACK: False, RST: False, RST | ACK: False, FIN | ACK: False, FIN: False,
         SYN | FIN: False, 0: False, SYN | RST: False, FIN | PSH | URG: False}


def received(box, send, family: int, seconds: float = 1.0) -> set:
    """Source ports of the TCP segments that reach ``box`` while ``send()`` runs."""
    sniff = Sniffer(box)
    try:
        send()
        return arrived_ports(sniff.frames(seconds), family)
    finally:
        sniff.close()


@pytest.mark.parametrize("mode", ["enforce", "audit"])
@pytest.mark.parametrize("family", [4, 6])
def test_only_what_conntrack_opens_a_flow_with_opens_one(lab, family, mode):
    """To a port a rule allows: what conntrack starts an entry with passes, the rest is
    dropped as invalid, counted, and reported as one flow -- in audit mode too (invalid
    is no policy drop). eBPF opened a flow on any of them (U14-F3)."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, mode=mode)
    events = lab.drop_events()
    ports = {flags: 41000 + i for i, flags in enumerate(FIRST)}

    def send():
        for flags, sport in ports.items():
            send_tcp(web, api, family, sport, 8080, flags, b"" if flags & (SYN | RST) else b"DATA")

    got = received(api, send, family)
    assert got == {ports[f] for f, opens in FIRST.items() if opens}
    bad = sum(not opens for opens in FIRST.values())
    assert lab.dropped("invalid") == bad and lab.dropped("no-rule") == 0
    reported = [(e.reason, e.audit, e.family, proto_name(e.family, e.proto), e.port)
                for e in drain(events, 0.5) if e.proto == 6]
    assert reported == [("invalid", False, family, "tcp", 8080)]


@pytest.mark.parametrize("flags", [RST, SYN | ACK, FIN | ACK])
def test_a_stray_segment_opens_nothing_for_the_other_side(lab, flags):
    """A segment dropped as invalid leaves no flow behind: the other side's packets to
    its source port are judged as a new flow of their own (api -> web: no rule). On eBPF
    a stray RST made a conntrack entry, and api's packets passed as its replies."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    for family in (4, 6):
        send_tcp(web, api, family, 42000, 8080, flags)
        back = received(web, lambda: send_tcp(api, web, family, 8080, 42000, ACK, b"DATA"), family)
        assert back == set(), f"IPv{family}: api's ACK passed as a reply"
    assert lab.dropped("invalid") == 2 and lab.dropped("no-rule") == 2


def test_a_segment_from_outside_is_judged_alike(lab):
    """Forwarded from outside the network (an ingress CIDR rule): the same table."""
    web, api = lab.add(2)
    lab.apply("10.237.0.0/24->api:tcp/8080 [fd00:237::/64]->api:tcp/8080", {web: "web", api: "api"})
    out = lab.outside
    for family in (4, 6):
        ports = {SYN: 43000, ACK: 43001, RST: 43002, SYN | ACK: 43003}
        got = received(api, lambda: [send_tcp(out, api, family, sport, 8080, flags, b"")
                                     for flags, sport in ports.items()], family)
        assert got == {43000, 43001}, f"IPv{family}"
    assert lab.dropped("invalid") == 4


def icmp4(kind: int, ident: int, body: bytes) -> bytes:
    head = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + body
    return head[:2] + struct.pack("!H", checksum(head)) + head[4:]


def quoted4(src, dst) -> bytes:
    """Destination unreachable (port) quoting a UDP datagram ``src`` -> ``dst`` never sent."""
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 1, 0, 64, 17, 0, socket.inet_aton(src.ip4),
                        socket.inet_aton(dst.ip4))
    inner = inner[:10] + struct.pack("!H", checksum(inner)) + inner[12:]
    inner += struct.pack("!HHHH", 7000, 40000, 16, 0)
    head = struct.pack("!BBHI", 3, 3, 0, 0)
    return head[:2] + struct.pack("!H", checksum(head + inner)) + head[4:] + inner


def quoted6(src, dst) -> bytes:
    inner = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + ipaddress.IPv6Address(src.ip6).packed
    inner += ipaddress.IPv6Address(dst.ip6).packed + struct.pack("!HHHH", 7000, 40000, 8, 0)
    return struct.pack("!BBHI", 1, 4, 0, 0) + inner   # the kernel fills in an ICMPv6 checksum


def icmp_arrivals(box, send, seconds: float = 1.0) -> list:
    """(family, ICMP type) of the ICMP and ICMPv6 messages reaching ``box`` (not ND/MLD)."""
    sniff = Sniffer(box)
    try:
        send()
        frames = sniff.frames(seconds)
    finally:
        sniff.close()
    out = [(4, f[34]) for f in frames if f[12:14] == b"\x08\x00" and f[23] == 1]
    return out + [(6, f[54]) for f in frames if f[12:14] == b"\x86\xdd" and f[20] == 58
                  and f[54] not in (130, 131, 132, 133, 134, 135, 136, 143)]


def test_icmp_replies_and_errors_of_no_flow_are_invalid(lab):
    """Under ``web->api`` (any protocol): an echo reply, a timestamp reply and an error
    quoting no flow open nothing (conntrack: invalid, nf_conntrack_proto_icmp.c and
    _icmpv6.c); requests do, and their replies pass back (a timestamp too, which eBPF did
    not track). eBPF let the first ones pass as new flows and logged its drops of them as
    no-rule, an echo reply and an error as two lines (U14-F4)."""
    web, api = lab.add(2)
    lab.apply("web->api", {web: "web", api: "api"})
    events = lab.drop_events()

    def send():
        with ns_socket(web.ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            for msg in (icmp4(0, 77, b"REPLY"), quoted4(api, web), icmp4(14, 78, b"\0" * 12),
                        icmp4(13, 79, b"\0" * 12)):
                s.sendto(msg, (api.ip4, 0))
        with ns_socket(web.ns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
            for msg in (struct.pack("!BBHHH", 129, 0, 0, 77, 1), quoted6(api, web),
                        struct.pack("!BBHHH", 139, 0, 0, 0, 0) + b"\0" * 8 + api.ip6.encode()[:8]):
                s.sendto(msg, (api.ip6, 0))

    sniff = Sniffer(web)
    try:
        at_api = icmp_arrivals(api, send)
        at_web = [(4, f[34]) for f in sniff.frames(0.3) if f[12:14] == b"\x08\x00" and f[23] == 1]
    finally:
        sniff.close()
    assert sorted(at_api) == [(4, 13), (6, 139)]
    assert at_web == [(4, 14)], "the timestamp request's reply"
    assert lab.dropped("invalid") == 5 and lab.dropped("no-rule") == 0
    reported = sorted((e.reason, proto_name(e.family, e.proto), e.port) for e in drain(events, 0.5))
    assert reported == [("invalid", "icmp", None), ("invalid", "icmpv6", None)]


def test_other_protocols_are_logged_by_number_on_both(lab):
    """A protocol without a name in the log is ``proto-N`` on both (eBPF said ``253``)."""
    web, db = lab.add(2)
    lab.apply("web->web", {web: "web", db: "db"})
    events = lab.drop_events()
    for proto, af, dst in ((253, socket.AF_INET, db.ip4), (47, socket.AF_INET6, db.ip6)):
        with ns_socket(web.ns, af, socket.SOCK_RAW, proto) as s:
            s.sendto(b"\0\0\x08\0EXPERIMENT", (dst, 0))
    got = sorted((e.reason, e.family, proto_name(e.family, e.proto), e.port) for e in drain(events, 0.7))
    assert got == [("no-rule", 4, "proto-253", None), ("no-rule", 6, "proto-47", None)]
