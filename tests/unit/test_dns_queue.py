"""NFQUEUE messages built by hand, byte by byte, and what plugin.dns.queue reads from them
and answers (the kernel side: tests/kernel/test_dns_queue_kernel.py)."""
from __future__ import annotations

import socket
import struct

import pytest

from plugin.dns import queue as q

PACKET = (3 << 8) | 0          # NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET


def attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def nlmsg(kind: int, payload: bytes, flags: int = 0) -> bytes:
    msg = struct.pack("=IHHII", 16 + len(payload), kind, flags, 0, 0) + payload
    return msg + b"\0" * (-len(msg) % 4)


def packet_msg(packet_id: int, data: bytes, outdev: int = 0, cap_len: int = 0) -> bytes:
    """An NFQNL_MSG_PACKET as nfnetlink_queue builds it: nfgenmsg, the packet header first."""
    attrs = attr(1, struct.pack("!IHB", packet_id, 0x0800, 2))            # NFQA_PACKET_HDR
    if outdev:
        attrs += attr(6, struct.pack("!I", outdev))                         # NFQA_IFINDEX_OUTDEV
    attrs += attr(10, data)                                                 # NFQA_PAYLOAD
    if cap_len:
        attrs += attr(13, struct.pack("!I", cap_len))                       # NFQA_CAP_LEN
    return nlmsg(PACKET, struct.pack("!BBH", socket.AF_INET, 0, 5353) + attrs)


def test_bind_messages_bind_copy_whole_packets_and_bound_the_queue():
    bind, params, maxlen = q.bind_messages(5353)
    for seq, msg in enumerate((bind, params, maxlen), 1):
        length, kind, flags, got_seq, _pid = struct.unpack_from("=IHHII", msg)
        assert (length, kind, flags, got_seq) == (len(msg), (3 << 8) | 2, 0x1 | 0x4, seq)
        assert struct.unpack_from("!BBH", msg, 16) == (0, 0, 5353)          # nfgenmsg, queue in res_id
    assert bind[20:] == attr(1, bytes([1, 0, 0, 0]))                       # NFQA_CFG_CMD BIND
    assert params[20:] == attr(2, struct.pack("!IB", 65535, 2))            # copy range, COPY_PACKET
    assert maxlen[20:] == attr(3, struct.pack("!I", q.MAX_LEN))            # NFQA_CFG_QUEUE_MAXLEN


def test_verdict_and_unbind_messages():
    msg = q.verdict_message(7, 0x01020304, q.NF_ACCEPT)
    assert struct.unpack_from("=IHH", msg) == (len(msg), (3 << 8) | 1, 0x1)   # no ACK asked
    assert msg[16:] == struct.pack("!BBH", 0, 0, 7) + attr(2, struct.pack("!II", 1, 0x01020304))
    assert q.unbind_message(7)[20:] == attr(1, bytes([2, 0, 0, 0]))


def test_parse_packet_reads_id_outdev_and_a_whole_payload():
    msg = packet_msg(42, b"x" * 4101, outdev=9)
    ((kind, _flags, payload),) = list(q.messages(msg))
    assert kind == PACKET
    assert q.parse_packet(payload) == q.Queued(42, b"x" * 4101, 9, True)


@pytest.mark.parametrize("cap_len, cut, whole", [(0, False, True), (100, False, True),
                                                 (65535, False, False), (0, True, False)])
def test_parse_packet_says_when_the_copy_is_not_the_whole_packet(cap_len, cut, whole):
    payload = packet_msg(5, b"y" * 100, cap_len=cap_len)[16:]
    assert q.parse_packet(payload, cut=cut).whole is whole


def test_parse_packet_without_a_header_has_no_id():
    assert q.parse_packet(b"") is None
    assert q.parse_packet(struct.pack("!BBH", 2, 0, 1) + attr(10, b"data")) is None


class Sock:
    def __init__(self):
        self.sent = []

    def send(self, data):
        self.sent.append(data)


def verdicts(sock) -> list:
    return [struct.unpack_from("!II", m, 24) for m in sock.sent]       # (verdict, id)


def reader(handler) -> q.DnsQueue:
    r = q.DnsQueue(5353, handler)
    r._sock = Sock()
    return r


def test_every_packet_gets_a_verdict_accept_after_the_handler_drop_when_not_whole():
    seen = []

    def handler(payload, outdev):
        seen.append((payload, outdev))
        if payload == b"boom":
            raise ValueError("bad answer")

    r = reader(handler)
    buf = packet_msg(1, b"ok", outdev=3) + packet_msg(2, b"boom") + packet_msg(3, b"z" * 8, cap_len=9)
    r._dispatch(memoryview(buf), cut=False)
    assert seen == [(b"ok", 3), (b"boom", 0)]
    assert verdicts(r._sock) == [(q.NF_ACCEPT, 1), (q.NF_ACCEPT, 2), (q.NF_DROP, 3)]
    assert (r.handled, r.dropped) == (2, 1)


def test_a_message_cut_short_is_dropped_by_its_id():
    r = reader(lambda *_: pytest.fail("the handler must not see a cut answer"))
    msg = packet_msg(77, b"w" * 3000)
    r._dispatch(memoryview(msg[:1000]), cut=True)
    assert verdicts(r._sock) == [(q.NF_DROP, 77)]


def test_other_messages_get_no_verdict():
    r = reader(lambda *_: pytest.fail("no packet here"))
    error = nlmsg(2, struct.pack("=i", -2) + b"\0" * 16)        # NLMSG_ERROR ENOENT (a late verdict)
    r._dispatch(memoryview(error + nlmsg(PACKET + 1, b"\0" * 4)), cut=False)
    assert r._sock.sent == []


class Feeding(Sock):
    """recv_into from a list of datagrams or OSErrors, then EAGAIN."""

    def __init__(self, items):
        super().__init__()
        self.items = list(items)

    def recv_into(self, buf, _n, _flags):
        if not self.items:
            raise BlockingIOError
        item = self.items.pop(0)
        if isinstance(item, OSError):
            raise item
        buf[:len(item)] = item
        return len(item)


def test_drain_counts_lost_answers_and_goes_on_then_stops_on_a_failed_socket():
    import errno
    r = reader(lambda *_: None)
    r._sock = Feeding([OSError(errno.ENOBUFS, "lost"), packet_msg(9, b"a"), OSError(errno.ENOBUFS, "lost")])
    assert r._drain() is True
    assert (r.lost, r.handled, verdicts(r._sock)) == (2, 1, [(q.NF_ACCEPT, 9)])
    r._sock = Feeding([OSError(errno.EIO, "gone")])
    assert r._drain() is False


def test_a_message_longer_than_the_buffer_is_dropped_by_its_id():
    r = reader(lambda *_: pytest.fail("the handler must not see a cut answer"))

    class Long(Feeding):
        def recv_into(self, buf, _n, _flags):
            item = super().recv_into(buf, _n, _flags)
            return q.RECV_SIZE + 10 if item else item

    r._sock = Long([packet_msg(31, b"c" * 100)])
    assert r._drain() is True
    assert verdicts(r._sock) == [(q.NF_DROP, 31)]
