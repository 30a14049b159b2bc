"""NFLOG messages built by hand, byte by byte, and what plugin.nflog reads from them."""
from __future__ import annotations

import ipaddress
import socket
import struct
import threading

from plugin.enforce.nftables import nflog

NID = "0123456789ab"


def attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def nlmsg(kind: int, payload: bytes, flags: int = 0) -> bytes:
    msg = struct.pack("=IHHII", 16 + len(payload), kind, flags, 0, 0) + payload
    return msg + b"\0" * (-len(msg) % 4)


def ipv4(proto: int, src: str, dst: str, l4: bytes, frag: int = 0) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head + l4


def ipv6(next_header: int, src: str, dst: str, l4: bytes) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(l4), next_header, 64)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + l4)


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)


def packet_message(prefix: str, payload: bytes, family: int = socket.AF_INET, hw: int = 0x0800,
                   devices: dict = None, stamp: tuple = None) -> bytes:
    body = struct.pack("!BBH", family, 0, 7350)
    body += attr(nflog.NFULA_PACKET_HDR, struct.pack("!HBx", hw, 2))
    for kind, index in (devices or {}).items():
        body += attr(kind, struct.pack("!I", index))
    if stamp:
        body += attr(nflog.NFULA_TIMESTAMP, struct.pack("!QQ", *stamp))
    body += attr(nflog.NFULA_PREFIX, prefix.encode() + b"\0")
    body += attr(nflog.NFULA_PAYLOAD, payload)
    return nlmsg((nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_PACKET, body)


# --- config messages -----------------------------------------------------------------

def test_bind_messages_bind_the_group_and_ask_for_the_packet():
    bind, mode, qthresh = nflog.bind_messages(7350, copy_range=128)
    length, kind, flags = struct.unpack_from("=IHH", bind)
    assert length == len(bind) and kind == (4 << 8) | 1
    assert flags == nflog.NLM_F_REQUEST | nflog.NLM_F_ACK
    assert bind[16:20] == struct.pack("!BBH", 0, 0, 7350)         # nfgenmsg: res_id = group
    assert nflog.attributes(bind[20:]) == {nflog.NFULA_CFG_CMD: b"\x01"}
    assert nflog.attributes(mode[20:]) == {nflog.NFULA_CFG_MODE: struct.pack("!IBB", 128, 2, 0)}
    assert nflog.attributes(qthresh[20:]) == {nflog.NFULA_CFG_QTHRESH: struct.pack("!I", 1)}


def test_ack_error_reads_the_errno():
    assert nflog.ack_error(struct.pack("=i", 0)) == 0
    assert nflog.ack_error(struct.pack("=i", -16)) == 16   # EBUSY: another socket holds the group


# --- packet messages -----------------------------------------------------------------

def test_a_tcp_drop_with_every_attribute():
    payload = ipv4(6, "10.224.0.2", "10.224.0.3", tcp(40000, 5432))
    msg = packet_message(f"sn {NID} no-rule", payload, devices={nflog.NFULA_IFINDEX_INDEV: 3,
                         nflog.NFULA_IFINDEX_PHYSINDEV: 17, nflog.NFULA_IFINDEX_PHYSOUTDEV: 18},
                         stamp=(1700000000, 250000))
    [(kind, _flags, body)] = list(nflog.messages(msg))
    p = nflog.parse_packet(body)
    assert p.prefix == f"sn {NID} no-rule" and p.family == socket.AF_INET
    assert p.hw_protocol == 0x0800 and p.hook == 2
    assert p.timestamp == 1700000000.25
    assert p.devices == {"indev": 3, "physindev": 17, "physoutdev": 18}
    assert p.flow() == nflog.Flow(4, "tcp", "10.224.0.2", "10.224.0.3", 40000, 5432)


def test_several_messages_in_one_datagram_and_flag_bits_in_attribute_types():
    one = packet_message("a", ipv4(17, "10.224.0.2", "10.224.0.3", struct.pack("!HHHH", 5, 53, 8, 0)))
    two = packet_message("b", ipv4(1, "10.224.0.2", "10.224.0.3", struct.pack("!BBHHH", 8, 0, 0, 1, 1)))
    parsed = [nflog.parse_packet(body) for _k, _f, body in nflog.messages(one + two)]
    assert [p.prefix for p in parsed] == ["a", "b"]
    assert parsed[0].flow().dport == 53 and parsed[0].flow().proto == "udp"
    assert parsed[1].flow() == nflog.Flow(4, "icmp", "10.224.0.2", "10.224.0.3", icmp_type=8)
    nested = struct.pack("=HH", 8, 10 | 0x8000) + b"x\0\0\0"
    assert nflog.attributes(nested) == {10: b"x\0\0\0"}


def test_truncated_and_empty_input_does_not_raise():
    assert list(nflog.messages(b"\x01\x02")) == []
    assert nflog.parse_packet(b"\x02") is None
    assert nflog.attributes(struct.pack("=HH", 2, 1)) == {}
    assert nflog.parse_payload(b"").proto == "unknown"
    assert nflog.parse_payload(b"\x45" + b"\0" * 10).proto == "unknown"   # too short for IPv4


def test_ipv6_with_extension_headers_and_fragments():
    hop_by_hop = bytes([6, 0]) + b"\0" * 6          # next: tcp, length 0 (8 bytes)
    flow = nflog.parse_payload(ipv6(0, "fd00:224::2", "fd00:224::3", hop_by_hop + tcp(1234, 80)))
    assert flow == nflog.Flow(6, "tcp", "fd00:224::2", "fd00:224::3", 1234, 80)
    first = struct.pack("!BBHI", 17, 0, 0x0001, 9) + struct.pack("!HHHH", 7, 53, 8, 0)
    later = struct.pack("!BBHI", 17, 0, 0x0100, 9) + b"\0" * 8
    assert nflog.parse_payload(ipv6(44, "fd00:224::2", "fd00:224::3", first)).dport == 53
    assert nflog.parse_payload(ipv6(44, "fd00:224::2", "fd00:224::3", later)).dport is None
    echo = nflog.parse_payload(ipv6(58, "fd00:224::2", "fd00:224::3", bytes([128, 0, 0, 0])))
    assert echo.proto == "icmpv6" and echo.icmp_type == 128


def test_ipv4_later_fragment_has_no_ports():
    flow = nflog.parse_payload(ipv4(6, "10.224.0.2", "10.224.0.3", b"\0" * 8, frag=0x0010))
    assert flow.proto == "tcp" and flow.dport is None


def test_arp_and_other_ethertypes_from_the_bridge_family():
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + b"\x02" * 6 + socket.inet_aton("10.224.0.9")
    arp += b"\0" * 6 + socket.inet_aton("10.224.0.3")
    assert nflog.parse_payload(arp, 0x0806, nflog.NFPROTO_BRIDGE) == \
        nflog.Flow(4, "arp", "10.224.0.9", "10.224.0.3")
    assert nflog.parse_payload(b"\x00\x01", 0x88CC).proto == "ethertype-0x88cc"
    # a payload that starts like an IPv4 header is still another ethertype's
    assert nflog.parse_payload(b"ARKU12MARK" * 4, 0x324D, nflog.NFPROTO_BRIDGE) == \
        nflog.Flow(0, "ethertype-0x324d")


# --- the reader thread -----------------------------------------------------------------

def test_reader_hands_over_packets_counts_and_stops():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    got, done = [], threading.Event()

    def handle(packet, when):
        got.append((packet.prefix, when))
        if len(got) == 2:
            done.set()

    reader = nflog.NflogReader(7350, handle, sock_factory=lambda: ours).start(wait=5)
    try:
        theirs.send(nlmsg(nflog.NLMSG_DONE, b""))                     # not a packet: ignored
        theirs.send(packet_message("one", ipv4(6, "10.224.0.2", "10.224.0.3", tcp(1, 2))))
        theirs.send(packet_message("two", ipv4(6, "10.224.0.2", "10.224.0.3", tcp(1, 3))))
        assert done.wait(5), got
    finally:
        reader.stop()
        theirs.close()
    assert [p for p, _ in got] == ["one", "two"] and reader.received == 2
    assert all(w > 1.6e9 for _, w in got)


def test_a_failing_handler_does_not_stop_the_reader():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    seen = threading.Event()

    def handle(packet, when):
        if packet.prefix == "bad":
            raise RuntimeError("boom")
        seen.set()

    reader = nflog.NflogReader(7350, handle, sock_factory=lambda: ours).start(wait=5)
    try:
        theirs.send(packet_message("bad", b""))
        theirs.send(packet_message("good", b""))
        assert seen.wait(5)
    finally:
        reader.stop()
        theirs.close()


def test_reader_waits_while_another_socket_holds_the_group():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tries = []

    def factory():
        tries.append(1)
        if len(tries) < 3:
            raise PermissionError(1, "NFLOG config: Operation not permitted")   # held elsewhere
        return ours

    nflog.NflogReader.MAX_RETRY = 0.05
    reader = nflog.NflogReader(7350, lambda p, t: None, sock_factory=factory)
    try:
        reader.start(wait=5)
        assert len(tries) == 3 and reader.ready.is_set()
    finally:
        reader.stop()
        theirs.close()
        nflog.NflogReader.MAX_RETRY = 10.0


def test_reader_gives_up_on_other_errors():
    def factory():
        raise OSError(93, "protocol not supported")

    reader = nflog.NflogReader(7350, lambda p, t: None, sock_factory=factory).start()
    reader._thread.join(5)
    assert not reader._thread.is_alive() and not reader.ready.is_set()
    reader.stop()
