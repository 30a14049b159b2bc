"""ctnetlink, reduced to what secnet asks of conntrack: every entry's two tuples and
status, and the deletion of entries by their original tuple.

Kernel background. A policy edit that may deny a flow must look at every entry
of the conntrack table (``plugin.kernel.conntrack``). pyroute2's ``Conntrack``
decodes each entry into objects with every attribute (~0.3-0.5 ms per entry
with pyroute2 0.9.7, so 30 ms for a host with 60 flows, seconds for thousands);
this module reads the few attributes it needs straight from the netlink
messages (``linux/netfilter/nfnetlink_conntrack.h``, a stable ABI): the two
tuples (addresses, L4 protocol, ports), the status bits and the zone. An
entry's original tuple is kept as the bytes the kernel sent, and a deletion
sends them back (``IPCTNL_MSG_CT_DELETE``), so what is deleted is exactly the
entry that was read.

Sockets are opened per call, in the calling thread's network namespace.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Optional

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_ZONE = 1, 2, 3, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE16, _BE32 = struct.Struct("!H"), struct.Struct("!I")


@dataclass(frozen=True)
class RawTuple:
    """One direction of a flow: IP protocol number, addresses (text), ports (None
    for protocols without them)."""

    proto: int
    src: str
    dst: str
    sport: Optional[int] = None
    dport: Optional[int] = None


@dataclass(frozen=True)
class RawEntry:
    """``family`` (socket.AF_INET/AF_INET6), both tuples, the status bits; ``key``:
    what :func:`delete` needs (the original tuple as sent, and the zone)."""

    family: int
    orig: RawTuple
    reply: RawTuple
    status: int
    key: tuple


def _attrs(data: bytes, start: int = 0, end: Optional[int] = None) -> dict:
    """{type: (offset, length)} of the attributes in ``data[start:end]`` (flags cleared)."""
    out, pos, end = {}, start, len(data) if end is None else end
    while pos + 4 <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < 4:
            break
        out.setdefault(kind & NLA_TYPE_MASK, (pos + 4, length - 4))
        pos += (length + 3) & ~3
    return out


def _tuple(data: bytes, where: tuple) -> Optional[RawTuple]:
    start, length = where
    top = _attrs(data, start, start + length)
    if CTA_TUPLE_IP not in top or CTA_TUPLE_PROTO not in top:
        return None
    ip = _attrs(data, top[CTA_TUPLE_IP][0], sum(top[CTA_TUPLE_IP]))
    l4 = _attrs(data, top[CTA_TUPLE_PROTO][0], sum(top[CTA_TUPLE_PROTO]))
    if CTA_IP_V4_SRC in ip:
        fam, src, dst = socket.AF_INET, ip[CTA_IP_V4_SRC], ip.get(CTA_IP_V4_DST)
    else:
        fam, src, dst = socket.AF_INET6, ip.get(CTA_IP_V6_SRC), ip.get(CTA_IP_V6_DST)
    if src is None or dst is None or CTA_PROTO_NUM not in l4:
        return None
    ports = [(_BE16.unpack_from(data, l4[k][0])[0] if k in l4 else None)
             for k in (CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT)]
    return RawTuple(data[l4[CTA_PROTO_NUM][0]], socket.inet_ntop(fam, data[src[0]:src[0] + src[1]]),
                    socket.inet_ntop(fam, data[dst[0]:dst[0] + dst[1]]), *ports)


def _entry(data: bytes, start: int, end: int) -> Optional[RawEntry]:
    family = data[start]
    attrs = _attrs(data, start + 4, end)   # after the nfgenmsg header
    if CTA_TUPLE_ORIG not in attrs or CTA_TUPLE_REPLY not in attrs:
        return None
    orig, reply = _tuple(data, attrs[CTA_TUPLE_ORIG]), _tuple(data, attrs[CTA_TUPLE_REPLY])
    if orig is None or reply is None:
        return None
    status = _BE32.unpack_from(data, attrs[CTA_STATUS][0])[0] if CTA_STATUS in attrs else 0
    o_start, o_len = attrs[CTA_TUPLE_ORIG]
    zone = data[attrs[CTA_ZONE][0]:attrs[CTA_ZONE][0] + 2] if CTA_ZONE in attrs else None
    return RawEntry(family, orig, reply, status, (data[o_start - 4:o_start + o_len], zone))


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    return sock


def _request(kind: int, flags: int, family: int, seq: int, body: bytes = b"") -> bytes:
    payload = struct.pack("=BBH", family, 0, 0) + body
    return _NLMSG.pack(16 + len(payload), (NFNL_SUBSYS_CTNETLINK << 8) | kind, flags, seq, 0) + payload


def dump() -> list:
    """Every conntrack entry of both families (RawEntry); OSError when ctnetlink refuses."""
    out: list = []
    with _socket() as sock:
        sock.send(_request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, socket.AF_UNSPEC, 1))
        while True:
            data = sock.recv(1 << 20)
            pos = 0
            while pos + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, pos)
                if length < _NLMSG.size or kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, pos + 16)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return out
                entry = _entry(data, pos + _NLMSG.size, pos + length)
                if entry is not None:
                    out.append(entry)
                pos += (length + 3) & ~3
            if not data:
                return out


def delete(entries: Iterable[RawEntry]) -> int:
    """Delete ``entries`` by their original tuples; returns how many the kernel deleted
    (an entry that ended meanwhile is skipped)."""
    deleted = 0
    with _socket() as sock:
        for seq, entry in enumerate(entries, 1):
            orig, zone = entry.key
            body = orig + (_NLA.pack(6, CTA_ZONE) + zone + b"\0\0" if zone is not None else b"")
            sock.send(_request(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, entry.family, seq, body))
            code = _ack(sock)
            if code == 0:
                deleted += 1
            elif code != errno.ENOENT:   # ENOENT: it ended meanwhile
                log.warning("conntrack entry %s not deleted: %s", entry.orig, os.strerror(code))
    return deleted


def _ack(sock: socket.socket) -> int:
    """The errno of the next acknowledgement (0: done)."""
    data = sock.recv(65536)
    if len(data) >= 20 and _NLMSG.unpack_from(data)[1] == NLMSG_ERROR:
        return -struct.unpack_from("=i", data, 16)[0]
    return 0
