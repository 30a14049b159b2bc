"""Watch link notifications: a device added, changed (e.g. its bridge) or deleted.

Every change of a network device -- made, deleted, up or down, enslaved to a
bridge or released from it -- is announced by the kernel on the rtnetlink
multicast group ``RTNLGRP_LINK`` (1; legacy bind mask ``RTMGRP_LINK`` 0x1) of
the network namespace, the stream ``ip monitor link`` prints: RTM_NEWLINK
for a new or changed device, RTM_DELLINK for a deleted one
(net/core/rtnetlink.c ``rtmsg_ifinfo``). ``ip link set V nomaster`` is one
RTM_NEWLINK of V without ``IFLA_MASTER`` (net/bridge/br_if.c ``br_del_if``
announces it). A device made with a master in the same request is first
announced without one (``rtnl_configure_link`` runs before ``do_set_master``),
so a subscriber must read the device's present state, never trust one
message's ``master``.

The thread, the reopen with backoff and the ``resync`` after a gap (ENOBUFS,
reopen) are :class:`plugin.kernel.nftwatch.NftWatcher`'s; this module gives
it the link socket and messages. A message is read raw, three attributes of
it (``IFLA_IFNAME`` 3, ``IFLA_MASTER`` 10, ``IFLA_GROUP`` 27; after the 16-byte
``struct ifinfomsg`` whose ``ifi_index`` is at offset 4), with
:mod:`plugin.kernel.linkgroups`' attribute walker: pyroute2's ``ifinfmsg``
decodes every attribute (statistics, link info), ~220 us a message here, and
a join announces about seven.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Iterator

from plugin.kernel.linkgroups import attr_text, walk_attrs
from plugin.kernel.nftwatch import NftWatcher
from plugin.kernel.tcwatch import rtnl_socket

RTMGRP_LINK = 0x1
NLMSG_HDR = struct.Struct("=IHHII")   # length, type, flags, sequence, port id
MESSAGES = {16: "add", 17: "delete"}   # RTM_NEWLINK, RTM_DELLINK (include/uapi/linux/rtnetlink.h)
IFINFO = struct.Struct("=BxHiII")   # struct ifinfomsg: family, type, index, flags, change
IFLA_IFNAME, IFLA_MASTER, IFLA_GROUP = 3, 10, 27
# a bridge port's own announcements (net/bridge/br_netlink.c br_ifinfo_notify) are
# ifi_family AF_BRIDGE and carry no IFLA_GROUP: the device's own (AF_UNSPEC) say it all
AF_BRIDGE = 7


@dataclass(frozen=True)
class LinkEvent:
    """One announcement. ``kind``: ``add`` (new or changed), ``delete``, or ``resync``
    (notifications were lost or the watcher reconnected: look at every device).
    ``ifindex``, ``ifname``; ``master``: the ifindex of its bridge (0: none) and
    ``group``: its interface group (``IFLA_GROUP``), as the message says -- the
    device's state when it was sent, which a later message may have changed."""

    kind: str
    ifindex: int = 0
    ifname: str = ""
    master: int = 0
    group: int = 0
    portid: int = field(default=0, compare=False)


RESYNC = LinkEvent("resync")


def parse(data: bytes) -> Iterator[LinkEvent]:
    """The link events in one datagram from the group; other message types and a bridge
    port's own announcements (family AF_BRIDGE) are skipped, a truncated message ends
    the datagram."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, portid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            return
        kind = MESSAGES.get(mtype)
        family = data[offset + NLMSG_HDR.size] if length > NLMSG_HDR.size else 0
        if kind is not None and family != AF_BRIDGE and length >= NLMSG_HDR.size + IFINFO.size:
            index = IFINFO.unpack_from(data, offset + NLMSG_HDR.size)[2]
            name, master, group = "", 0, 0
            view = memoryview(data)
            for atype, start, stop in walk_attrs(view, offset + NLMSG_HDR.size + IFINFO.size, offset + length):
                if atype == IFLA_IFNAME:
                    name = attr_text(view, start, stop)
                elif atype == IFLA_MASTER and stop - start >= 4:
                    master = struct.unpack_from("=I", data, start)[0]
                elif atype == IFLA_GROUP and stop - start >= 4:
                    group = struct.unpack_from("=I", data, start)[0]
            yield LinkEvent(kind, index, name, master, group, portid)
        offset += (length + 3) & ~3


def open_socket() -> socket.socket:
    """A NETLINK_ROUTE socket joined to RTNLGRP_LINK (:func:`plugin.kernel.tcwatch.rtnl_socket`)."""
    return rtnl_socket(RTMGRP_LINK)


class LinkWatcher(NftWatcher):
    """Calls subscribers with every :class:`LinkEvent` of this network namespace
    (``subscribe``, ``start``, ``stop`` as :class:`~plugin.kernel.nftwatch.NftWatcher`)."""

    name = "secnet-linkwatch"
    parse = staticmethod(parse)
    resync = RESYNC

    def __init__(self, opener=open_socket, sleep=None):
        super().__init__(opener, sleep)
