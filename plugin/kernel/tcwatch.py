"""Watch traffic-control notifications: who added or deleted a tc filter, qdisc or chain.

Every change of a qdisc, filter or filter chain is announced by the kernel on
the rtnetlink multicast group ``RTNLGRP_TC`` (4; legacy bind mask ``RTMGRP_TC``
0x8) of the network namespace -- the stream ``tc monitor`` prints
(net/sched/cls_api.c ``tfilter_notify``, ``tc_chain_notify``; sch_api.c
``qdisc_notify``). Seen on Linux 6.18: ``tc filter del dev V ingress pref 1``
is one RTM_DELTFILTER on parent ``ffff:fff2`` (clsact ingress; egress is
``ffff:fff3``); ``tc qdisc del dev V clsact`` one RTM_DELQDISC (kind
``clsact``, parent ``ffff:fff1``) and RTM_DELCHAIN -- its filters go with it
without a message of their own; libbpf's ``bpf_tc_attach`` one RTM_NEWTFILTER
(its ``bpf_tc_hook_create`` one RTM_NEWQDISC). The requester's port id is in
each message, but libbpf opens a new netlink socket for every call, so the
daemon's own attaches cannot be told apart by port: subscribers get them too,
and check the kernel (cheaply) instead.

The thread, the reopen with backoff and the ``resync`` after a gap (ENOBUFS,
reopen) are :class:`plugin.kernel.nftwatch.NftWatcher`'s; this module gives
it tc's socket and messages. The messages are decoded by pyroute2's ``tcmsg``.
Subscribers run in the watcher thread: they must be quick, and use
:class:`plugin.kernel.debounced.Debouncer` to do real work elsewhere.
"""
from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional

from plugin.kernel.links import IPRoute  # noqa: F401 (first: pyroute2 without its eager __init__)
from plugin.kernel.nftwatch import NftWatcher
from pyroute2.netlink.rtnl.tcmsg import tcmsg  # noqa: E402,I001

RTMGRP_TC = 0x8
RCVBUF = 1 << 20
SO_RCVBUFFORCE = 33
NLMSG_HDR = struct.Struct("=IHHII")   # length, type, flags, sequence, port id
# RTM_* (include/uapi/linux/rtnetlink.h) -> (kind, object)
MESSAGES = {36: ("add", "qdisc"), 37: ("delete", "qdisc"), 44: ("add", "filter"),
            45: ("delete", "filter"), 100: ("add", "chain"), 101: ("delete", "chain")}
CLSACT_INGRESS, CLSACT_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3   # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_*)


@dataclass(frozen=True)
class TcEvent:
    """One change, as announced.

    ``kind``: ``add``, ``delete``, or ``resync`` (notifications were lost or the
    watcher reconnected: re-check everything). ``object``: ``qdisc``, ``filter``,
    ``chain`` or ``all``. ``ifindex``: the device (0 for resync). ``parent``: the
    hook (``CLSACT_INGRESS``/``CLSACT_EGRESS`` for a clsact filter). ``handle``;
    ``prio`` (a filter's priority, tc's ``pref``) and ``protocol`` (an ETH_P_*
    number, host order) from ``tcm_info``; ``tc_kind``: ``TCA_KIND`` (``bpf``,
    ``clsact``, ...). ``portid``: the requester's netlink port id (0 if unknown).
    """

    kind: str
    object: str
    ifindex: int = 0
    parent: int = 0
    handle: int = 0
    prio: int = 0
    protocol: int = 0
    tc_kind: str = ""
    portid: int = field(default=0, compare=False)


RESYNC = TcEvent("resync", "all")


def parse(data: bytes) -> Iterator[TcEvent]:
    """The events in one datagram from the group; other message types are skipped,
    a truncated message ends the datagram."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, portid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            return
        known = MESSAGES.get(mtype)
        if known is not None:
            msg = tcmsg(data[offset:offset + length])
            msg.decode()
            info = msg["info"]
            yield TcEvent(known[0], known[1], msg["index"], msg["parent"], msg["handle"],
                          info >> 16, socket.ntohs(info & 0xFFFF), msg.get_attr("TCA_KIND") or "",
                          portid)
        offset += (length + 3) & ~3


def rtnl_socket(groups: int) -> socket.socket:
    """A NETLINK_ROUTE socket joined to the legacy group mask ``groups`` (``RTMGRP_*``;
    listening needs no privilege; the receive buffer is forced past rmem_max where the
    process may: CAP_NET_ADMIN)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def open_socket() -> socket.socket:
    """:func:`rtnl_socket` joined to RTNLGRP_TC."""
    return rtnl_socket(RTMGRP_TC)


class TcWatcher(NftWatcher):
    """Calls subscribers with every :class:`TcEvent` of this network namespace
    (``subscribe``, ``start``, ``stop`` as :class:`~plugin.kernel.nftwatch.NftWatcher`)."""

    name = "secnet-tcwatch"
    parse = staticmethod(parse)
    resync = RESYNC

    def __init__(self, opener=open_socket, sleep=None):
        super().__init__(opener, sleep)


def hook_change(event: TcEvent) -> bool:
    """A ``match`` for :meth:`TcWatcher.subscribe`: what may have taken a program off a
    clsact hook or put a filter before it -- a filter added or deleted on either clsact
    hook, a qdisc or chain deleted -- and every ``resync``. A new qdisc is not (it holds
    no filter yet: libbpf makes clsact on every join)."""
    if event.kind == "resync":
        return True
    if event.object == "filter":
        return event.parent in (CLSACT_INGRESS, CLSACT_EGRESS)
    return event.kind == "delete"


class Links:
    """The devices named by events since the last :meth:`take` (a subscriber adds,
    a debounced check takes); a ``resync`` makes it "every device" (None)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._links: Optional[set] = set()

    def add(self, event: TcEvent) -> None:
        with self._lock:
            if event.kind == "resync" or self._links is None:
                self._links = None
            else:
                self._links.add(event.ifindex)

    def take(self) -> Optional[set]:
        """The ifindexes added since the last take (None: all may have changed)."""
        with self._lock:
            links, self._links = self._links, set()
            return links
