"""A conntrack entry as secnet reads it: both tuples, the status bits, the ct mark.

The types that :mod:`plugin.kernel.ctindex` decodes entries into and
:mod:`plugin.kernel.conntrack` judges (apart from both, so that neither imports
the other).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Optional

from plugin.kernel.marks import LEARNED_FLOW_MARK

PROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp",
               socket.IPPROTO_ICMPV6: "icmp"}
IPS_DST_NAT = 1 << 5   # the entry's status bit: its destination was NATed (linux/netfilter/nf_conntrack_common.h)


@dataclass(frozen=True)
class Tuple:
    """One direction of a flow: ``proto`` is tcp, udp, icmp or ``proto-N``."""

    proto: str
    src: str
    dst: str
    sport: Optional[int] = None
    dport: Optional[int] = None


@dataclass(frozen=True)
class Entry:
    """A conntrack entry: ``family`` 4 or 6, both tuples, the status bits."""

    family: int
    orig: Tuple
    reply: Tuple
    status: int = 0
    mark: int = 0                                              # the connection's ct mark
    key: object = field(default=None, compare=False, repr=False)  # the kernel's tuple, to delete by

    @property
    def learned(self) -> bool:
        """Did a learned DNS address admit this flow? (``LEARNED_FLOW_MARK``)"""
        return bool(self.mark & LEARNED_FLOW_MARK)

    @property
    def dnat(self) -> bool:
        return bool(self.status & IPS_DST_NAT) or self.reply.src != self.orig.dst

    @property
    def source(self) -> str:
        """Who opened the flow."""
        return self.orig.src

    @property
    def target(self) -> str:
        """Who answers it (after DNAT: the container behind a published port)."""
        return self.reply.src

    @property
    def port(self) -> Optional[int]:
        """The destination port the filter hooks saw (after DNAT); None but for tcp/udp."""
        return self.reply.sport if self.orig.proto in ("tcp", "udp") else None

    @property
    def addresses(self) -> set:
        return {self.orig.src, self.orig.dst, self.reply.src, self.reply.dst}
