"""The name, group, alias and kind of every link of a namespace, from one RTM_GETLINK
dump read raw.

pyroute2's ``IPRoute.get_links()`` parses every attribute of every link into
Python objects (statistics, per-family settings, link info: ~25 KiB of objects
a link, 2,000 links ~50 MiB at once); the port-group check needs two attributes.
Here the dump is received into one reused buffer and only ``IFLA_IFNAME``,
``IFLA_GROUP``, ``IFLA_IFALIAS`` and the link info's kind are read: a tuple per link
is all that is made.

Kernel facts (include/uapi/linux/rtnetlink.h, if_link.h, netlink.h):
``RTM_GETLINK`` = 18 with ``NLM_F_REQUEST | NLM_F_DUMP`` and a ``struct
ifinfomsg`` (16 bytes) asks for every link; each answer is an ``RTM_NEWLINK``
(16) message: ``nlmsghdr`` (16 bytes), ``ifinfomsg``, then attributes (``nlattr``:
u16 length, u16 type, value, padded to 4 bytes); the dump ends with
``NLMSG_DONE`` (3); ``NLMSG_ERROR`` (2) carries a negative errno. ``IFLA_IFNAME``
= 3 (NUL-terminated), ``IFLA_GROUP`` = 27 (u32, ``dev->group``; 0 is the default group),
``IFLA_IFALIAS`` = 20 (string), ``IFLA_LINKINFO`` = 18 (nested: ``IFLA_INFO_KIND`` = 1,
a string such as ``veth``). A dump datagram is at most 32 KiB (net/netlink/af_netlink.c,
netlink_dump: ``max_recvmsg_len`` capped at ``SKB_WITH_OVERHEAD(32768)``): the 64 KiB
buffer holds each whole.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
IFLA_IFNAME, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_GROUP = 3, 18, 20, 27
IFLA_INFO_KIND = 1
_HDR = struct.Struct("=IHHII")   # nlmsghdr: length, type, flags, seq, pid
_ATTR = struct.Struct("=HH")     # nlattr: length, type
_IFINFO = 16                     # sizeof(struct ifinfomsg)


class LinkGroups:
    """A NETLINK_ROUTE socket, opened in the calling thread's network namespace
    on first use and kept; :meth:`read` dumps that namespace's links."""

    def __init__(self, bufsize: int = 1 << 16):
        self._sock = None
        self._seq = 0
        self._buf = bytearray(bufsize)

    def read(self) -> dict:
        """``{ifname: group}`` of every link. Raises OSError (the errno of the kernel's
        NLMSG_ERROR, or of the socket)."""
        return {name: group for name, group, _alias, _kind in self.links()}

    def links(self, attempts: int = 3) -> list:
        """``(ifname, group, alias or None, kind or None)`` of every link, in the kernel's
        order. A dump the kernel marks interrupted (``NLM_F_DUMP_INTR``: links changed
        under it, one may be missing) is made again, up to ``attempts`` times, then
        OSError(EINTR): callers take a link missing from the answer as absent, so a
        partial answer is never returned. Raises OSError as :meth:`read`."""
        for _ in range(attempts):
            out, interrupted = self._dump()
            if not interrupted:
                return out
        raise OSError(errno.EINTR, f"RTM_GETLINK dump: interrupted by link changes {attempts} times")

    def _dump(self) -> tuple:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self._sock.bind((0, 0))
        self._seq += 1
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
        self._sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                                  self._seq, 0) + body)
        out: list = []
        interrupted = False
        while True:
            n, _anc, flags, _addr = self._sock.recvmsg_into([self._buf])
            if flags & socket.MSG_TRUNC:
                raise OSError(errno.EMSGSIZE, f"RTM_GETLINK dump: a datagram over {len(self._buf)} bytes")
            done, intr = _parse(memoryview(self._buf)[:n], self._seq, out)
            interrupted |= intr
            if done:
                return out, interrupted

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _parse(data: memoryview, seq: int, out: list) -> tuple:
    """Append the links of the messages in ``data`` (one datagram of the dump answering
    ``seq``) to ``out``: (at ``NLMSG_DONE``, some message marked ``NLM_F_DUMP_INTR``)."""
    at, interrupted = 0, False
    while at + _HDR.size <= len(data):
        length, kind, flags, mseq, _pid = _HDR.unpack_from(data, at)
        if length < _HDR.size:
            raise OSError(0, f"netlink: malformed message of {length} bytes")
        if mseq == seq:
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if kind == NLMSG_DONE:
                return True, interrupted
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, at + _HDR.size)[0]
                raise OSError(code, f"RTM_GETLINK dump: {os.strerror(code)}")
            if kind == RTM_NEWLINK:
                link = _attrs(data, at + _HDR.size + _IFINFO, at + length)
                if link[0] is not None:
                    out.append(link)
        at += (length + 3) & ~3
    return False, interrupted


def _attrs(data: memoryview, at: int, end: int) -> tuple:
    """(name, group, alias, kind) of one link's attributes ``data[at:end]``: name None
    without ``IFLA_IFNAME``; group 0 when absent (the kernel's default group)."""
    name = alias = kind = None
    group = 0
    for atype, start, stop in walk_attrs(data, at, end):
        if atype == IFLA_IFNAME:
            name = attr_text(data, start, stop)
        elif atype == IFLA_GROUP and stop - start >= 4:
            group = struct.unpack_from("=I", data, start)[0]
        elif atype == IFLA_IFALIAS:
            alias = attr_text(data, start, stop)
        elif atype == IFLA_LINKINFO:
            kind = next((attr_text(data, s, e) for t, s, e in walk_attrs(data, start, stop) if t == IFLA_INFO_KIND), None)
    return name, group, alias, kind


def walk_attrs(data: memoryview, at: int, end: int):
    """(type, value start, value end) of each attribute in ``data[at:end]``."""
    while at + _ATTR.size <= end:
        alen, atype = _ATTR.unpack_from(data, at)
        if alen < _ATTR.size or at + alen > end:
            return
        yield atype & 0x3FFF, at + _ATTR.size, at + alen   # without NLA_F_NESTED / _NET_BYTEORDER
        at += (alen + 3) & ~3


def attr_text(data: memoryview, start: int, stop: int) -> str:
    return bytes(data[start:stop]).split(b"\0", 1)[0].decode(errors="replace")
