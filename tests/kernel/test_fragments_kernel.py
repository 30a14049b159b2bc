"""Fragmented datagrams of a flow, on both backends (U12-F6): a datagram larger
than the MTU, fragmented by the sender's kernel, arrives when its flow is
allowed and not otherwise; a fragment after the first is judged by the flow of
its first fragment, never by payload bytes read as ports, and alone (no first
fragment seen) it does not pass.

nftables' conntrack reassembles before it judges; the eBPF datapath remembers
the first fragment's ports (plugin/enforce/ebpf/bpf/lib/frag.h). Verdicts are
read from real packets: a socket's receive, or frames sniffed at the
receiver's eth0.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from nsfixtures import lab  # noqa: F401 (fixture)
from packets import Sniffer, mac_bytes, ns_socket, send_frame
from plugin.kernel.icmp import checksum

pytestmark = pytest.mark.kernel

ALLOWED, DENIED = 7000, 7001
RULES = f"web->api:udp/{ALLOWED}"
BIG = 4000                   # bytes of UDP payload: three fragments at MTU 1500


@pytest.fixture
def pair(lab):
    web, api = lab.add(2)
    lab.apply(RULES, {web: "web", api: "api"}, "deny")
    return web, api


def received(src, dst, fam: int, port: int, size: int, timeout: float = 1.5) -> int | None:
    """The length of what ``dst``'s socket on ``port`` received of one datagram of
    ``size`` bytes that ``src`` sent it (its kernel fragments it); None: nothing."""
    af = socket.AF_INET if fam == 4 else socket.AF_INET6
    with ns_socket(dst.ns, af, socket.SOCK_DGRAM) as rx, ns_socket(src.ns, af, socket.SOCK_DGRAM) as tx:
        rx.bind((dst.ip(fam), port))
        rx.settimeout(timeout)
        tx.sendto(b"y" * size, (dst.ip(fam), port))
        try:
            return len(rx.recv(65535))
        except socket.timeout:
            return None


@pytest.mark.parametrize("fam", [4, 6])
def test_a_fragmented_datagram_of_an_allowed_flow_arrives(lab, pair, fam):
    web, api = pair
    assert received(web, api, fam, ALLOWED, 100) == 100          # control: unfragmented
    assert received(web, api, fam, ALLOWED, BIG) == BIG
    assert received(web, api, fam, DENIED, BIG) is None
    assert received(web, api, fam, DENIED, 100) is None
    assert received(api, web, fam, ALLOWED, BIG) is None          # the reverse is no flow


# --- crafted fragments ---------------------------------------------------------------------

def _frag4(src, dst, ident: int, offset: int, more: bool, payload: bytes) -> bytes:
    """An Ethernet/IPv4 fragment (protocol UDP) of datagram ``ident`` at byte ``offset``."""
    flags = (offset // 8) | (0x2000 if more else 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags, 64, 17, 0,
                     socket.inet_aton(src.ip4), socket.inet_aton(dst.ip4))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return mac_bytes(dst.mac) + mac_bytes(src.mac) + b"\x08\x00" + ip + payload


def _frag6(src, dst, ident: int, offset: int, more: bool, payload: bytes) -> bytes:
    """An Ethernet/IPv6 fragment (fragment header, next header UDP) of datagram ``ident``."""
    frag = struct.pack("!BBHI", 17, 0, offset | (1 if more else 0), ident)
    ip6 = struct.pack("!IHBB", 6 << 28, len(frag) + len(payload), 44, 64)
    ip6 += ipaddress.IPv6Address(src.ip6).packed + ipaddress.IPv6Address(dst.ip6).packed
    return mac_bytes(dst.mac) + mac_bytes(src.mac) + b"\x86\xdd" + ip6 + frag + payload


def _datagram(src, dst, fam: int, port: int, ident: int, tokens: tuple) -> list:
    """Two fragments of one UDP datagram to ``port`` (checksum right): the first
    with the UDP header and ``tokens[0]``, the second at the offset after it,
    starting with the bytes of an allowed port pair and then ``tokens[1]``."""
    first = tokens[0].ljust(1440 if fam == 6 else 1472, b"a")
    second = struct.pack("!HH", ALLOWED, ALLOWED) + tokens[1].ljust(400, b"b")
    length = 8 + len(first) + len(second)
    udp = struct.pack("!HHHH", 40000, port, length, 0)
    if fam == 6:
        pseudo = ipaddress.IPv6Address(src.ip6).packed + ipaddress.IPv6Address(dst.ip6).packed
        pseudo += struct.pack("!I3xB", length, 17)
    else:
        pseudo = socket.inet_aton(src.ip4) + socket.inet_aton(dst.ip4) + struct.pack("!xBH", 17, length)
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp + first + second) or 0xffff)
    build = _frag6 if fam == 6 else _frag4
    head = udp + first
    return [build(src, dst, ident, 0, True, head), build(src, dst, ident, len(head), False, second)]


def seen_at(c, frames: list, tokens: tuple) -> list:
    """Which of ``tokens`` appear in frames arriving at ``c`` after ``frames`` were sent."""
    sniffer = Sniffer(c)
    try:
        for src, frame in frames:
            send_frame(src, frame)
        got = sniffer.frames(1.0)
    finally:
        sniffer.close()
    return [any(t in f for f in got) for t in tokens]


@pytest.mark.parametrize("fam", [4, 6])
def test_later_fragments_follow_their_first_and_alone_do_not_pass(lab, pair, fam):
    web, api = pair
    ok = (b"first-ok-%d" % fam, b"later-ok-%d" % fam)
    first, later = _datagram(web, api, fam, ALLOWED, 0x1234, ok)
    # control: the crafted datagram of the allowed flow arrives, both fragments
    assert seen_at(api, [(web, first), (web, later)], ok) == [True, True]
    # to a port no rule allows: neither fragment, though the second one's first
    # bytes read as the allowed ports
    no = (b"first-no-%d" % fam, b"later-no-%d" % fam)
    first, later = _datagram(web, api, fam, DENIED, 0x1235, no)
    assert seen_at(api, [(web, first), (web, later)], no) == [False, False]
    # a later fragment alone, its first bytes the allowed ports: dropped
    alone = (b"never-sent", b"later-alone-%d" % fam)
    _first, later = _datagram(web, api, fam, ALLOWED, 0x1236, alone)
    before = lab.dropped("invalid")
    assert seen_at(api, [(web, later)], alone) == [False, False]
    if lab.backend_name == "ebpf":   # nftables' conntrack holds it for reassembly: no verdict
        assert lab.dropped("invalid") == before + 1
