"""What a datapath implements for DNS-name rules (``plugin.enforce.nftables.fqdn``,
``plugin.enforce.ebpf.fqdn``).

A learned address is held in the kernel as one *element* per
``(identity, address, proto, lo, hi)``: "segment ``identity`` may open
``proto`` flows to ``address`` on ports ``lo..hi``" until ``expires``. The
kernel drops it by itself when it expires (nft element timeouts; BPF: the
expiry stored in the value and compared by the program); flows opened while
it was allowed go on (conntrack). Several rules of one segment may give the
same element; the daemon's :class:`~plugin.dns.store.LearnedStore` keeps
which rule learned what.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

#: The bit of a connection's ``ct mark`` that says "a learned address admitted
#: this flow" (both backends set it on the flow's first packet; the identities
#: in the ct mark are 16-bit). Conntrack pruning keeps such a flow after its
#: address expired, while a dns(...) rule of its segment that learned the
#: address is still there (``plugin.kernel.conntrack.dns_rule_by``). Free of
#: the packet-mark bits 0x200000 (passed) and 0x400000 (a DNS answer to hold).
LEARNED_FLOW_MARK = 0x00800000


@dataclass(frozen=True, order=True)
class Grant:
    """One element: ``identity`` may reach ``address`` (``family`` 4 or 6)
    with ``proto`` (tcp, udp, icmp, any) on ports ``lo..hi`` until
    ``expires`` (Unix time, seconds). ``name``: the DNS name of the answer
    (informational: the kernel keeps it as the element's comment);
    ``learned``: when the answer came, as far as a read-back knows (0: unknown);
    ``tag``: which DNS rules taught the element (``LearnedStore.tags``: the number the
    datapath counts the flows it admits under; 0: unknown, counted for every DNS
    rule of the segment and service)."""

    identity: int
    address: str
    family: int
    proto: str
    lo: int
    hi: int
    expires: float = 0.0
    name: str = ""
    learned: float = field(default=0.0, compare=False)
    tag: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple:
        return (self.identity, self.address, self.proto, self.lo, self.hi)


class FqdnDatapath(Protocol):
    """The DNS part of a backend. Every call is one atomic kernel change."""

    def allow(self, network_id: str, grants: Sequence[Grant]) -> None:
        """Put ``grants`` in force, each until its ``expires`` (an existing
        element gets the new expiry, also a shorter one). Returns only when
        the kernel enforces them; raises BackendError when it refused."""

    def revoke(self, network_id: str, keys: Sequence[tuple]) -> None:
        """Remove the elements with these ``Grant.key`` values (absent ones are fine)."""

    def learned(self, network_id: str) -> list:
        """The :class:`Grant` values the kernel holds now (expired ones not
        included), ``expires`` as read back (whole seconds)."""
