"""Reading the NFQUEUE that holds DNS answers, on a raw NETLINK_NETFILTER socket.

Kernel background (``include/uapi/linux/netfilter/nfnetlink_queue.h``,
``net/netfilter/nfnetlink_queue.c``). An iptables ``NFQUEUE --queue-num N``
rule hands the packet to ``nfnetlink_queue`` (subsystem ``NFNL_SUBSYS_QUEUE``
3), which sends a copy to the netlink socket bound to queue N *in the same
network namespace* and keeps the packet until that socket sends a verdict
for its id. Binding is ``NFQNL_MSG_CONFIG`` with ``NFQA_CFG_CMD`` = BIND
(EBUSY when another socket holds the queue), ``NFQA_CFG_PARAMS`` (copy
range, mode ``NFQNL_COPY_PACKET``) and ``NFQA_CFG_QUEUE_MAXLEN``. Each packet
arrives as one ``NFQNL_MSG_PACKET`` message: ``nfgenmsg``, then
``NFQA_PACKET_HDR`` (packet id, ethertype, hook; always the first
attribute), ``NFQA_IFINDEX_OUTDEV``, ``NFQA_PAYLOAD`` (the packet from its
network header on: a datagram that came in fragments is whole, conntrack
reassembled it before the forward/output hooks) and ``NFQA_CAP_LEN`` when
the copy is shorter than the packet. The verdict is ``NFQNL_MSG_VERDICT``
with ``NFQA_VERDICT_HDR`` (verdict, id).

Sizes (U21-F3). The kernel caps the copy range at 65,531 bytes
(``NFQNL_MAX_COPY_RANGE``: 0xffff minus an attribute header), so a message
is at most ~65.7 KB; :data:`RECV_SIZE` (128 KiB) holds any of them whole.
A packet the kernel cannot hand over (the socket's receive buffer is full)
is dropped by the kernel at once (``user_dropped``; the next recv fails with
ENOBUFS: counted in ``lost``, logged): it holds no slot. Every message that
arrives gets a verdict: accept after ``handler(payload, outdev)`` returned
(raised or not: the learner fails closed by learning nothing), drop when the
copy is not the whole packet. At most :data:`MAX_LEN` answers wait at once;
beyond, the kernel drops new ones (no ``--queue-bypass``: fail closed), as it
drops every answer while no socket is bound.

Why own code. python-netfilterqueue (1.1.0) reads each message into a fixed
4,096-byte buffer and caps the copy range at 4,016 bytes: a bigger message
was truncated, never reached the callback, got no verdict and held its slot
for good (4,096 of them stopped DNS learning for every network, U21-F3).
pyroute2 (0.9) has no NFQUEUE socket; fnfqueue (1.1.2) would do, but adds a
compiled (cffi) dependency to the plugin image for what is, here, one
config request, one attribute walk and one verdict message. The netlink
framing (attributes, message walk, ACKs) is shared with the NFLOG reader
(``plugin.enforce.nftables.nflog``); only the NFQUEUE constants and the
verdict are written here.

``netns``: a path such as ``/run/netns/NAME`` to read the queue of another
network namespace (the kernel tier): the socket is made on a thread inside
that namespace (a socket stays in the namespace it was made in).
"""
from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from plugin.enforce.nftables.nflog import _attr, ack_error, attributes, messages
from plugin.kernel import netns as netns_mod
from plugin.kernel.nfgroups import NETLINK_NETFILTER, SO_RCVBUFFORCE

log = logging.getLogger(__name__)
DEFAULT_QUEUE = 5353
MAX_LEN = 4096          # answers held at once before the kernel drops new ones
COPY_RANGE = 65535      # the kernel takes at most 65,531 (NFQNL_MAX_COPY_RANGE)
RECV_SIZE = 1 << 17     # > the largest message: 65,531 bytes of packet + its attributes
RCVBUF = 8 << 20        # messages waiting in the socket; when full, the kernel drops (fail closed)
BATCH = 256             # messages read per wake-up before the stop pipe is looked at again
LOST_LOG_EVERY = 10.0   # seconds between two warnings about lost messages

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_PACKET = 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_IFINDEX_OUTDEV = 1, 2, 6
NFQA_PAYLOAD, NFQA_CAP_LEN = 10, 13
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


@dataclass(frozen=True)
class Queued:
    """One NFQNL_MSG_PACKET: ``payload`` from the network header on; ``whole``: False
    when the copy is shorter than the packet (NFQA_CAP_LEN) or the message was cut."""

    packet_id: int
    payload: bytes
    outdev: int = 0
    whole: bool = True


# --- messages ------------------------------------------------------------------------------
def _message(kind: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def bind_messages(queue: int, copy_range: int = COPY_RANGE, max_len: int = MAX_LEN) -> list:
    """The requests (each wants an ACK) that bind ``queue``, ask for ``copy_range`` bytes
    of each packet and let ``max_len`` packets wait."""
    ack = NLM_F_REQUEST | NLM_F_ACK
    return [
        _message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)),
                 ack, 1),
        _message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range,
                                                                            NFQNL_COPY_PACKET)), ack, 2),
        _message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", max_len)), ack, 3),
    ]


def unbind_message(queue: int) -> bytes:
    return _message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0)))


def verdict_message(queue: int, packet_id: int, verdict: int) -> bytes:
    """The verdict (NF_ACCEPT, NF_DROP) for packet ``packet_id`` of ``queue`` (no ACK asked)."""
    return _message(NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))


def parse_packet(payload: bytes, cut: bool = False) -> Optional[Queued]:
    """A Queued from the payload of an NFQNL_MSG_PACKET message (nfgenmsg first); None
    without a packet header (then there is no id to give a verdict for). ``cut``: the
    message was longer than what was read."""
    attrs = attributes(payload[4:]) if len(payload) >= 4 else {}
    head = attrs.get(NFQA_PACKET_HDR, b"")
    if len(head) < 4:
        return None
    data = attrs.get(NFQA_PAYLOAD, b"")
    outdev = attrs.get(NFQA_IFINDEX_OUTDEV, b"")
    cap = attrs.get(NFQA_CAP_LEN, b"")
    whole = not cut and NFQA_PAYLOAD in attrs and (len(cap) < 4 or struct.unpack("!I", cap[:4])[0] <= len(data))
    return Queued(struct.unpack("!I", head[:4])[0], bytes(data),
                  struct.unpack("!I", outdev[:4])[0] if len(outdev) >= 4 else 0, whole)


# --- the socket ------------------------------------------------------------------------------
def open_socket(queue: int, rcvbuf: int = RCVBUF) -> socket.socket:
    """A netlink socket bound to NFQUEUE ``queue`` in the calling thread's network namespace.
    Raises OSError (EBUSY/EPERM: another socket holds the queue); the socket is closed then."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        sock.settimeout(2.0)
        for msg in bind_messages(queue):
            sock.send(msg)
            _expect_ack(sock, queue)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def _expect_ack(sock: socket.socket, queue: int) -> None:
    """Wait for the ACK of a config request; a packet queued meanwhile (the queue is bound
    from the first request on) is dropped, so that none waits without a verdict."""
    for _ in range(64):
        for kind, _flags, payload in messages(sock.recv(RECV_SIZE)):
            if kind == NLMSG_ERROR:
                code = ack_error(payload)
                if code:
                    raise OSError(code, f"NFQUEUE {queue} config: {os.strerror(code)}")
                return
            packet = parse_packet(payload) if kind == PACKET else None
            if packet is not None:
                sock.send(verdict_message(queue, packet.packet_id, NF_DROP))
    raise OSError(errno.EPROTO, f"NFQUEUE {queue} config: no acknowledgement")


class DnsQueue:
    """Binds queue ``num`` and calls ``handler(payload, outdev)`` for each packet, then
    accepts it (see the module doc). ``handled``: packets handed to the handler;
    ``dropped``: packets dropped unread (not whole); ``lost``: ENOBUFS reports."""

    def __init__(self, num: int, handler: Callable[[bytes, int], None], netns: Optional[str] = None):
        self.num, self.handler, self.netns = num, handler, netns
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._wake_r = self._wake_w = -1
        self._buf = bytearray(RECV_SIZE)
        self.handled = self.dropped = self.lost = 0
        self._lost_logged = 0.0

    def start(self) -> None:
        """Bind the queue (raises OSError when another reader holds it) and start reading."""
        opener = lambda: open_socket(self.num)
        self._sock = netns_mod.run_in(self.netns, opener) if self.netns else opener()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name=f"dns-queue-{self.num}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, "queue")
        sel.register(self._wake_r, selectors.EVENT_READ, "stop")
        try:
            while True:
                if any(key.data == "stop" for key, _ in sel.select()):
                    return
                if not self._drain():   # unbound: the kernel drops what waits and what comes
                    self._close()
                    return
        finally:
            sel.close()

    def _drain(self) -> bool:
        """Read and answer up to BATCH messages; False when the socket failed for good."""
        for _ in range(BATCH):
            try:
                size = self._sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:   # the kernel dropped answers it could not hand over
                    self._lost()
                    continue
                log.error("DNS queue %d: %s; answers are dropped from now on (fail closed)", self.num, exc)
                return False
            self._dispatch(memoryview(self._buf)[:min(size, RECV_SIZE)], size > RECV_SIZE)
        return True

    def _dispatch(self, buf: memoryview, cut: bool) -> None:
        if cut:   # cannot happen with RECV_SIZE; the packet header comes first: drop it
            packet = parse_packet(bytes(buf[16:]), cut=True)
            if packet is not None:
                self._verdict(packet.packet_id, NF_DROP)
            return
        for kind, _flags, payload in messages(bytes(buf)):
            packet = parse_packet(payload) if kind == PACKET else None
            if packet is None:
                if kind == NLMSG_ERROR and ack_error(payload):
                    log.warning("DNS queue %d: %s", self.num, os.strerror(ack_error(payload)))
                continue
            self._answer(packet)

    def _answer(self, packet: Queued) -> None:
        if not packet.whole:
            self.dropped += 1
            self._verdict(packet.packet_id, NF_DROP)
            return
        try:
            self.handler(packet.payload, packet.outdev)
        except Exception:   # the handler learns nothing then; the answer still gets its verdict
            log.exception("DNS queue %d: handling an answer failed", self.num)
        finally:
            self.handled += 1
            self._verdict(packet.packet_id, NF_ACCEPT)

    def _verdict(self, packet_id: int, verdict: int) -> None:
        """Send the verdict; a send to the kernel fails only when it has no memory for the
        message (ENOBUFS, ENOMEM): tried again, then logged (unbind drops the packet)."""
        message = verdict_message(self.num, packet_id, verdict)
        for attempt in range(3):
            try:
                self._sock.send(message)
                return
            except OSError as exc:
                if attempt == 2:
                    log.error("DNS queue %d: no verdict for packet %d: %s", self.num, packet_id, exc)
                else:
                    time.sleep(0.001)

    def _lost(self) -> None:
        self.lost += 1
        now = time.monotonic()
        if now - self._lost_logged >= LOST_LOG_EVERY:
            self._lost_logged = now
            log.warning("DNS queue %d: the kernel dropped answers this reader could not take in time "
                        "(%d report(s) so far; fail closed)", self.num, self.lost)

    def stop(self) -> None:
        """Stop reading and unbind; queued answers are dropped by the kernel from now on."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(5)
            self._thread = None
        self._close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.send(unbind_message(self.num))
            except OSError:
                pass   # closing the socket unbinds too
            self._sock.close()
            self._sock = None
