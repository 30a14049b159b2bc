"""Read NFLOG messages from the kernel over a raw NETLINK_NETFILTER socket.

Kernel background. An nft rule ``log group N`` hands the packet to the
``nfnetlink_log`` subsystem, which sends it to the one netlink socket that
has bound group N *in the same network namespace* (binding a group another
socket holds fails with EBUSY). Binding is a ``NFULNL_MSG_CONFIG`` request
(subsystem ``NFNL_SUBSYS_ULOG``) carrying ``NFULA_CFG_CMD`` = BIND, then a
second one with ``NFULA_CFG_MODE`` asking for the first ``copy_range``
bytes of each packet. Each logged packet then arrives as an
``NFULNL_MSG_PACKET`` message: ``nfgenmsg`` (its family is the hook's:
AF_INET, AF_INET6 or NFPROTO_BRIDGE) followed by attributes: the prefix of
the rule, the packet from its network header on (``NFULA_PAYLOAD``), the
in/out devices (for bridged packets ``PHYSINDEV``/``PHYSOUTDEV`` are the
bridge ports, ``INDEV``/``OUTDEV`` the bridge), ``NFULA_PACKET_HDR`` with
the ethertype, and ``NFULA_TIMESTAMP`` when the packet carries one.

When the reader falls behind, the kernel drops messages and the next recv
fails with ENOBUFS: that is counted (``lost``) and reading goes on. The
reader blocks in select() on the socket and a wake-up pipe: it does nothing
while nothing is logged.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO_BRIDGE = 7
# packet attributes
NFULA_PACKET_HDR, NFULA_TIMESTAMP = 1, 3
NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 4, 5
NFULA_IFINDEX_PHYSINDEV, NFULA_IFINDEX_PHYSOUTDEV = 6, 7
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
IPV6_EXT_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
COPY_RANGE = 128


@dataclass(frozen=True)
class Flow:
    """The addresses and ports of a logged packet (what the log shows)."""

    family: int                   # 4, 6, or 0 for a non-IP frame
    proto: str                    # tcp, udp, icmp, icmpv6, arp, proto-N, ethertype-0xNNNN
    src: Optional[str] = None
    dst: Optional[str] = None
    sport: Optional[int] = None
    dport: Optional[int] = None   # for icmp: None; see icmp_type
    icmp_type: Optional[int] = None


@dataclass(frozen=True)
class Packet:
    """One NFULNL_MSG_PACKET message."""

    family: int                   # nfgenmsg family: AF_INET, AF_INET6, NFPROTO_BRIDGE
    prefix: str = ""
    hw_protocol: int = 0          # ethertype
    hook: int = 0
    timestamp: Optional[float] = None
    devices: dict = field(default_factory=dict)   # indev/outdev/physindev/physoutdev -> ifindex
    payload: bytes = b""

    def flow(self) -> Flow:
        return parse_payload(self.payload, self.hw_protocol, self.family)


# --- messages ------------------------------------------------------------------------------
def _attr(kind: int, data: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(data), kind)
    return head + data + b"\0" * (-len(data) % 4)


def config_message(group: int, attrs: bytes, seq: int = 0, family: int = 0) -> bytes:
    """A NFULNL_MSG_CONFIG request for ``group`` (which wants an ACK)."""
    body = struct.pack("!BBH", family, 0, group) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_messages(group: int, copy_range: int = COPY_RANGE) -> list:
    """The requests that bind ``group`` and ask for ``copy_range`` bytes per packet."""
    return [
        config_message(group, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), seq=1),
        config_message(group, _attr(NFULA_CFG_MODE, struct.pack("!IBB", copy_range,
                                                                NFULNL_COPY_PACKET, 0)), seq=2),
        config_message(group, _attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)), seq=3),
    ]


def attributes(data: bytes) -> dict:
    """type -> value of a run of netlink attributes (flag bits of the type dropped)."""
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


def messages(buf: bytes):
    """(type, flags, payload) of each netlink message in one datagram."""
    pos = 0
    while pos + 16 <= len(buf):
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", buf, pos)
        if length < 16 or pos + length > len(buf):
            break
        yield kind, flags, buf[pos + 16:pos + length]
        pos += (length + 3) & ~3


def ack_error(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR message (0: an ACK)."""
    return -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0


def parse_packet(payload: bytes) -> Optional[Packet]:
    """A Packet from the payload of an NFULNL_MSG_PACKET message (nfgenmsg first)."""
    if len(payload) < 4:
        return None
    family = payload[0]
    attrs = attributes(payload[4:])
    hw_protocol = hook = 0
    if NFULA_PACKET_HDR in attrs and len(attrs[NFULA_PACKET_HDR]) >= 3:
        hw_protocol, hook = struct.unpack_from("!HB", attrs[NFULA_PACKET_HDR])
    stamp = None
    if len(attrs.get(NFULA_TIMESTAMP, b"")) >= 16:
        sec, usec = struct.unpack_from("!QQ", attrs[NFULA_TIMESTAMP])
        stamp = sec + usec / 1e6
    devices = {}
    for name, kind in (("indev", NFULA_IFINDEX_INDEV), ("outdev", NFULA_IFINDEX_OUTDEV),
                       ("physindev", NFULA_IFINDEX_PHYSINDEV), ("physoutdev", NFULA_IFINDEX_PHYSOUTDEV)):
        if len(attrs.get(kind, b"")) >= 4:
            devices[name] = struct.unpack_from("!I", attrs[kind])[0]
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
    return Packet(family=family, prefix=prefix, hw_protocol=hw_protocol, hook=hook,
                  timestamp=stamp, devices=devices, payload=attrs.get(NFULA_PAYLOAD, b""))


# --- payloads ------------------------------------------------------------------------------
def parse_payload(data: bytes, hw_protocol: int = 0, family: int = 0) -> Flow:
    """Addresses, protocol and ports of a packet that starts at its network header."""
    version = data[0] >> 4 if data else 0
    if hw_protocol == ETH_P_ARP:
        return _arp(data)
    # another ethertype first: its payload is no IP header, whatever its first nibble
    # says (U12-F5 b: bytes "AR..." of a raw frame were read as IPv4, protocol 75)
    if hw_protocol and hw_protocol not in (ETH_P_IP, ETH_P_IPV6):
        return Flow(0, f"ethertype-0x{hw_protocol:04x}")
    if version == 4 and len(data) >= 20:
        return _ipv4(data)
    if version == 6 and len(data) >= 40:
        return _ipv6(data)
    return Flow(0, "unknown")


def _ipv4(data: bytes) -> Flow:
    ihl = (data[0] & 0x0F) * 4
    proto = data[9]
    frag_offset = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
    src, dst = str(ipaddress.IPv4Address(data[12:16])), str(ipaddress.IPv4Address(data[16:20]))
    l4 = data[ihl:] if frag_offset == 0 else b""
    return _transport(4, proto, src, dst, l4)


def _ipv6(data: bytes) -> Flow:
    proto, pos = data[6], 40
    src, dst = str(ipaddress.IPv6Address(data[8:24])), str(ipaddress.IPv6Address(data[24:40]))
    while proto in IPV6_EXT_HEADERS and pos + 2 <= len(data):
        proto, pos = data[pos], pos + (data[pos + 1] + 1) * 8
    if proto == 44 and pos + 8 <= len(data):  # fragment header: ports only in the first fragment
        first = struct.unpack_from("!H", data, pos + 2)[0] & 0xFFF8 == 0
        proto, pos = data[pos], pos + 8
        if not first:
            return Flow(6, PROTO_NAMES.get(proto, f"proto-{proto}"), src, dst)
    return _transport(6, proto, src, dst, data[pos:])


def _transport(family: int, proto: int, src: str, dst: str, l4: bytes) -> Flow:
    name = PROTO_NAMES.get(proto, f"proto-{proto}")
    if proto in (6, 17, 132) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
        return Flow(family, name, src, dst, sport, dport)
    if proto in (1, 58) and len(l4) >= 1:
        return Flow(family, name, src, dst, icmp_type=l4[0])
    return Flow(family, name, src, dst)


def _arp(data: bytes) -> Flow:
    if len(data) < 28 or data[4:6] != b"\x06\x04":
        return Flow(0, "arp")
    return Flow(4, "arp", str(ipaddress.IPv4Address(data[14:18])),
                str(ipaddress.IPv4Address(data[24:28])))


# --- the socket and its reader thread ------------------------------------------------------
def open_socket(group: int, copy_range: int = COPY_RANGE, rcvbuf: int = 4 << 20) -> socket.socket:
    """A netlink socket bound to NFLOG ``group`` in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        sock.settimeout(2.0)
        for msg in bind_messages(group, copy_range):
            sock.send(msg)
            _expect_ack(sock)
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _expect_ack(sock: socket.socket) -> None:
    for kind, _flags, payload in messages(sock.recv(65536)):
        if kind == NLMSG_ERROR:
            code = ack_error(payload)
            if code:
                raise OSError(code, f"NFLOG config: {os.strerror(code)}")
            return
    raise OSError(errno.EPROTO, "NFLOG config: no acknowledgement")


class NflogReader:
    """A daemon thread that hands each logged packet to ``handle(packet, received_at)``.

    ``sock_factory`` makes the bound socket (default: :func:`open_socket` in
    the daemon's own network namespace). While another socket holds the
    group (the kernel answers EPERM, or EBUSY: typically a daemon that is
    still exiting), the thread tries again after a growing pause, up to
    ``MAX_RETRY`` seconds; ``ready`` is set once the group is bound.
    """

    MAX_RETRY = 10.0

    def __init__(self, group: int, handle: Callable[[Packet, float], None],
                 sock_factory: Optional[Callable[[], socket.socket]] = None):
        self.group = group
        self.handle = handle
        self.received = 0
        self.lost = 0
        self.ready = threading.Event()
        self._factory = sock_factory or (lambda: open_socket(group))
        self._sock: Optional[socket.socket] = None
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="secnet-nflog", daemon=True)

    def start(self, wait: float = 0.0) -> "NflogReader":
        """Start reading; with ``wait``, until the group is bound (OSError if it is not by then)."""
        self._thread.start()
        if wait and not self.ready.wait(wait):
            raise OSError(errno.EBUSY, f"NFLOG group {self.group} not bound within {wait} s")
        return self

    def stop(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self._sock is not None:
            self._sock.close()

    def _bind(self) -> bool:
        """Bind the group, waiting out another holder; False when told to stop or on failure."""
        pause = 0.5
        while True:
            try:
                self._sock = self._factory()
                self.ready.set()
                return True
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EBUSY):
                    log.error("cannot read NFLOG group %d (%s): `secnet log` stays empty", self.group, exc)
                    return False
                log.warning("NFLOG group %d is held by another socket; trying again in %.1f s",
                            self.group, pause)
            if select.select([self._wake_r], [], [], pause)[0]:
                return False
            pause = min(pause * 2, self.MAX_RETRY)

    def _run(self) -> None:
        if not self._bind():
            return
        while True:
            ready, _, _ = select.select([self._sock, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                buf = self._sock.recv(1 << 18)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped messages: we were too slow
                    self.lost += 1
                    continue
                log.error("NFLOG socket failed: %s; the drop log stops", exc)
                return
            self._dispatch(buf, time.time())

    def _dispatch(self, buf: bytes, now: float) -> None:
        for kind, _flags, payload in messages(buf):
            if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                continue
            packet = parse_packet(payload)
            if packet is None:
                continue
            self.received += 1
            try:
                self.handle(packet, now)
            except Exception:
                log.exception("handling an NFLOG message failed")
