"""What a datapath implements for DNS-name rules (``plugin.enforce.nftables.fqdn``,
``plugin.enforce.ebpf.fqdn``).

A learned address is held in the kernel as one *element* per
``(identity, address, proto, lo, hi)``: "segment ``identity`` may open
``proto`` flows to ``address`` on ports ``lo..hi``" until ``expires``. The
kernel drops it by itself when it expires (nft element timeouts; BPF: the
expiry stored in the value and compared by the program); flows opened while
it was allowed go on (conntrack). Several rules of one segment may give the
same element; the daemon's :class:`~plugin.dns.store.LearnedStore` keeps
which rule learned what. The datapath counts the flows it admits under a
tag of the rules that taught the address; :func:`learned_counters` gives those
counts back to the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

from plugin.enforce.backend import Counters
from segmentation.policymap import FQDN_KEY, FQDN_TAG_KEY as TAG_KEY

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


def learned_counters(counters: Counters, policy, tags: dict) -> Counters:
    """``counters`` with the datapath's DNS keys spread to the DNS rules' own keys
    (``FqdnEntry.key``): a tag's ``(TAG_KEY, tag)`` to each rule of ``tags[tag]``
    (``LearnedStore.tags``: ``(identity, proto, lo, hi, rule)`` sets), a service key
    (``FqdnEntry.service_key``: tag 0, not known) to every DNS rule of ``policy`` with
    that segment and service. ``allowed_once`` gives each to the first of them (pair
    totals count a flow once). A tag no longer known (a restarted daemon whose
    elements of it expired) counts for no rule."""
    by_service: dict = {}
    for f in policy.fqdns:
        by_service.setdefault(f.service_key, []).append(f.key)
    allowed, once = dict(counters.allowed), dict(counters.allowed_once or counters.allowed)
    for key in [k for k in allowed if k and k[0] in (TAG_KEY, FQDN_KEY) and len(k) <= 5]:
        value, first = allowed.pop(key), once.pop(key, None)
        owners = sorted((FQDN_KEY,) + t for t in tags.get(key[1], ())) if key[0] == TAG_KEY \
            else sorted(by_service.get(key, ()))
        for owner in owners:
            allowed[owner] = _add(allowed.get(owner), value)
        if owners and first:
            once[owners[0]] = _add(once.get(owners[0]), first)
    return replace(counters, allowed=allowed, allowed_once=once)


def _add(total, value) -> tuple:
    return tuple(a + b for a, b in zip(total or (0, 0), value))
