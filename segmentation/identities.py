"""Segment identities: small numbers that the datapath matches instead of names.

Every segment of a network gets a numeric identity, allocated once and kept
(persisted by the daemon) until no rule and no member names the segment.
The datapath keys its policy map by identity (Cilium's model: policy per
label set, never per container), so a container joining is an address ->
identity element, and a policy edit is a set of policy-map entries.

Identities are 16-bit. ``1..255`` are reserved; segments get ``256..65535``.
The reserved ones:

* ``OUTSIDE`` -- any address that is not a container of the network;
* ``HOST`` -- the host itself (an address of the host);
* ``PENDING`` -- an endpoint whose segment is not known yet (fail closed:
  denied both ways, Cilium's ``init`` identity);
* ``QUARANTINED`` -- an endpoint with an invalid segment label (denied both
  ways, whatever the rules say).

Allocation sits behind :class:`IdentityAllocator`, so that a store shared by
several hosts can hand them out later; :func:`assign` is the pure rule that
every allocator follows.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Protocol

from .errors import PolicyError

OUTSIDE = 1
HOST = 2
PENDING = 3
QUARANTINED = 4
RESERVED = {OUTSIDE: "outside", HOST: "host", PENDING: "pending", QUARANTINED: "quarantined"}
FIRST_SEGMENT = 256
LAST_SEGMENT = 65535


class IdentityAllocator(Protocol):
    """Hands out segment identities of one network, stable until released."""

    def identities(self, network_id: str) -> Mapping[str, int]:
        """segment name -> identity, as allocated now."""

    def allocate(self, network_id: str, segments: Iterable[str]) -> Mapping[str, int]:
        """Make sure each of ``segments`` has an identity, keep every existing one,
        and free those of segments not in ``segments``; returns the whole map.

        Raises PolicyError when the network has no identity left.
        """

    def forget(self, network_id: str) -> None:
        """Free every identity of a removed network."""


def assign(existing: Mapping[str, int], wanted: Iterable[str]) -> dict[str, int]:
    """The identities of ``wanted``: kept from ``existing``, new ones lowest-free.

    Segments of ``existing`` that are not ``wanted`` are freed (absent from
    the result). Raises PolicyError when more than 65,280 segments are wanted.
    """
    wanted = sorted(set(wanted))
    out = {seg: existing[seg] for seg in wanted if seg in existing}
    used = set(out.values())
    free = (i for i in range(FIRST_SEGMENT, LAST_SEGMENT + 1) if i not in used)
    for seg in wanted:
        if seg not in out:
            try:
                out[seg] = next(free)
            except StopIteration:
                raise PolicyError(f"too many segments: at most {LAST_SEGMENT - FIRST_SEGMENT + 1}"
                                  " per network") from None
    return out


def takeover(existing: Mapping[str, int], idle: Iterable[str]) -> Optional[str]:
    """The segment of ``idle`` (allocated in ``existing``, without members, named by no
    rule) whose identity a new segment would get from :func:`assign` if that one alone
    were freed: the lowest idle identity, when no identity below it is free. None when
    there is no such segment (the new one gets a free identity anyway).

    A segment that no rule names has the ``intra`` entry and the ``*`` rules' entries of
    its identity: a function of the identity alone. A new segment that takes an idle
    identity over gets exactly the entries in force for it (the delta cancels: nothing
    to compute, write or copy), and nothing holds that identity meanwhile, so nothing
    is allowed that was not. Freeing every idle segment at once would remove their
    entries only for the next new segments to add them back, each a copy of them all.
    """
    found = min((existing[seg], seg) for seg in idle) if idle else None
    if found is None:
        return None
    below = range(FIRST_SEGMENT, found[0])
    return found[1] if len(below) == len(set(below).intersection(existing.values())) else None


class MemoryAllocator:
    """An :class:`IdentityAllocator` that keeps identities in memory (tests, tools)."""

    def __init__(self) -> None:
        self._by_network: dict[str, dict[str, int]] = {}

    def identities(self, network_id: str) -> Mapping[str, int]:
        return dict(self._by_network.get(network_id, {}))

    def allocate(self, network_id: str, segments: Iterable[str]) -> Mapping[str, int]:
        self._by_network[network_id] = assign(self._by_network.get(network_id, {}), segments)
        return dict(self._by_network[network_id])

    def forget(self, network_id: str) -> None:
        self._by_network.pop(network_id, None)


def name_of(identity: int, identities: Mapping[str, int]) -> str:
    """A readable name for ``identity``: its segment, or the reserved name."""
    if identity in RESERVED:
        return RESERVED[identity]
    for seg, ident in identities.items():
        if ident == identity:
            return seg
    return f"identity {identity}"
