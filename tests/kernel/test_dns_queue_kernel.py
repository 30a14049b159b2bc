"""The DNS answer queue's reader (``plugin.dns.queue``) with real packets, in a throwaway
namespace: every packet the kernel queues gets a verdict, whatever its size (U21-F3).

A namespace of its own (loopback only) sends UDP datagrams to a local port; an
iptables ``mangle OUTPUT`` rule puts them in NFQUEUE :data:`QUEUE`, which a
``DnsQueue`` reads. ``/proc/net/netfilter/nfnetlink_queue`` (per namespace) shows
how many packets wait for a verdict. Cleanup: the namespace goes (with it the
rule and the queue), also when a test fails.
"""
from __future__ import annotations

import socket
import time
import uuid

import pytest

from packets import ns_socket, sh
from plugin.dns.queue import DnsQueue

pytestmark = pytest.mark.kernel

QUEUE, PORT = 5353, 5999
UDP_MAX = 65535 - 28          # the largest UDP payload over IPv4 (lo's MTU is 65,536)


@pytest.fixture
def queued():
    """(namespace, DnsQueue, seen): datagrams to 127.0.0.1:PORT are queued and read;
    ``seen`` gets (payload length, outdev) of each packet the handler was given."""
    ns = f"sn-q-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    reader = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "iptables", "-w", "5", "-t", "mangle", "-A", "OUTPUT", "-p", "udp",
           "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE))
        seen: list = []
        reader = DnsQueue(QUEUE, lambda payload, outdev: seen.append((len(payload), outdev)),
                          netns=f"/run/netns/{ns}")
        reader.start()
        yield ns, reader, seen
    finally:
        if reader is not None:
            reader.stop()
        sh("ip", "netns", "del", ns, check=False)


def _queue_line(ns: str) -> list:
    """The queue's line of /proc/net/netfilter/nfnetlink_queue: number, portid, waiting,
    copy mode, copy range, queue_dropped, user_dropped, id sequence, 1."""
    text = sh("ip", "netns", "exec", ns, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    (line,) = [f for f in (row.split() for row in text.splitlines()) if f and f[0] == str(QUEUE)]
    return [int(f) for f in line]


def _waiting_drains(ns: str, within: float = 5.0) -> int:
    """The packets still waiting for a verdict once they stop going down (0 expected)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        waiting = _queue_line(ns)[2]
        if waiting == 0:
            return 0
        time.sleep(0.05)
    return _queue_line(ns)[2]


def _pair(ns: str):
    """(receiver bound to 127.0.0.1:PORT, sender) in ``ns``."""
    rx = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)   # SO_RCVBUFFORCE: every passed datagram fits
    rx.bind(("127.0.0.1", PORT))
    rx.settimeout(3)
    return rx, ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)


def test_the_queue_copies_whole_packets(queued):
    ns, _reader, _seen = queued
    assert _queue_line(ns)[3:5] == [2, 65531]    # COPY_PACKET, the kernel's largest range


@pytest.mark.parametrize("size", [4022, 4100, 6000, 20000, 65531 - 28])
def test_an_answer_of_any_size_is_read_whole_and_passed(queued, size):
    ns, reader, seen = queued
    rx, tx = _pair(ns)
    with rx, tx:
        tx.sendto(b"a" * size, ("127.0.0.1", PORT))
        assert len(rx.recv(UDP_MAX)) == size         # accepted after the handler ran
    assert seen == [(size + 28, 1)]                  # the whole IP packet, out through lo (1)
    assert (reader.handled, reader.dropped) == (1, 0)
    assert _waiting_drains(ns) == 0


def test_a_packet_longer_than_the_copy_range_is_dropped_not_held(queued):
    """65,535 bytes: 4 more than the kernel copies: the reader cannot see it whole, so
    it gets NF_DROP (fail closed) without reaching the handler; nothing stays queued."""
    ns, reader, seen = queued
    rx, tx = _pair(ns)
    with rx, tx:
        tx.sendto(b"a" * UDP_MAX, ("127.0.0.1", PORT))
        tx.sendto(b"small", ("127.0.0.1", PORT))
        assert rx.recv(UDP_MAX) == b"small"
    assert seen == [(33, 1)]
    assert (reader.handled, reader.dropped) == (1, 1)
    assert _waiting_drains(ns) == 0


def test_a_flood_of_big_answers_leaves_nothing_held_and_a_later_answer_passes(queued):
    """6,000 answers of 4.1 KB, sent faster than the reader takes them (more than MAX_LEN:
    with python-netfilterqueue each held its slot for good and the small answer after them
    was dropped). The kernel drops what does not fit (queue full, socket buffer full),
    every packet that reached the reader is passed, and nothing waits afterwards."""
    ns, reader, _seen = queued
    rx, tx = _pair(ns)
    with rx, tx:
        for _ in range(6000):
            tx.sendto(b"b" * 4100, ("127.0.0.1", PORT))
        assert _waiting_drains(ns, within=30) == 0
        line = _queue_line(ns)
        assert line[7] + line[5] == 6000             # queued (an id each) or dropped: queue full
        assert reader.handled >= 1000, (reader.handled, line)
        tx.sendto(b"later", ("127.0.0.1", PORT))
        got = []
        while not got or got[-1] != b"later":       # the passed flood first, in order
            got.append(rx.recv(UDP_MAX))
        assert len(got) - 1 == reader.handled - 1    # every handled one reached the receiver
    assert _waiting_drains(ns) == 0
