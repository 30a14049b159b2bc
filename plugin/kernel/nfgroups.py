"""A netfilter netlink socket that listens to multicast groups.

Kernel background: ``NETLINK_NETFILTER`` sockets join the groups of
``linux/netfilter/nfnetlink.h`` (e.g. ``NFNLGRP_CONNTRACK_NEW`` 1,
``NFNLGRP_CONNTRACK_DESTROY`` 3, ``NFNLGRP_NFTABLES`` 7) with
``NETLINK_ADD_MEMBERSHIP``; a listener that falls behind loses messages
(ENOBUFS), so its receive buffer is raised past ``net.core.rmem_max`` with
``SO_RCVBUFFORCE`` where the process may (CAP_NET_ADMIN).
"""
from __future__ import annotations

import socket
from typing import Iterable

NETLINK_NETFILTER, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 12, 270, 1
SO_RCVBUFFORCE = 33


def group_socket(groups: Iterable[int], rcvbuf: int, blocking: bool = True) -> socket.socket:
    """A bound NETLINK_NETFILTER socket joined to ``groups`` with a receive buffer
    of ``rcvbuf`` bytes (forced when allowed, else as large as rmem_max lets it).

    Raises OSError (no CAP_NET_ADMIN to join, no netfilter netlink); the socket
    is closed then."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        for group in groups:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        sock.setblocking(blocking)
    except OSError:
        sock.close()
        raise
    return sock
