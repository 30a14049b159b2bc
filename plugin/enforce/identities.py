"""The life of a network's segment identities in the reconciler: kept idle, freed clean.

Identities come from the state's allocator
(:class:`segmentation.identities.IdentityAllocator`): allocating a network's
segments keeps the identity of every segment in the list and frees the rest.
A freed identity is handed out again (lowest free first), so whatever the
kernel keeps *by identity* must die with it. Policy entries and ports are
recompiled with the new map in the same step as the identity is given again;
addresses learned from DNS answers are not (they are data, kept per identity
by :mod:`plugin.dns` and the backend: nft elements ``mark . address ...``, the
eBPF ``fqdn`` trie), and a ``*->dns(NAME)`` rule gives the next holder the very
entry (same identity, same rule text) that kept them. So :func:`allocate`
revokes them *before* the allocator commits the freeing: a crash in between
leaves an idle identity with nothing learned, never a freed one with its
addresses (issue 12; ``tests/kernel/test_identity_reuse_kernel.py``).

An idle segment (members gone, no rule naming it) keeps its identity while a
join can take it over (:func:`idle_kept`): its entries are those in force,
so the join writes only its port. Not with DNS rules, as before :func:`allocate`
revoked what a freed identity learned (a takeover would now be safe too; left
off, unchanged, until measured).
"""
from __future__ import annotations

import collections
import logging
from typing import Iterable, Mapping, Optional

from segmentation.identities import takeover
from segmentation.rules import segment_mentions

log = logging.getLogger(__name__)


def idle_kept(real, live: set, default: str) -> Optional[set]:
    """Idle segments of ``real`` (a :class:`~plugin.enforce.reconciler.Realized`: no
    member in ``live``, no rule naming them, not ``default``) kept as a new one joins:
    all but the one it takes over (:func:`~segmentation.identities.takeover`); None if
    it takes over none, and always with DNS rules (what a segment learned is kept by
    identity; :func:`allocate` revokes it when the identity is freed)."""
    idle = () if real.policy.fqdns else {s for s in real.policy.identities
                                         if s not in live and s != default and not real.named.get(s)}
    taken = takeover(real.policy.identities, idle)
    return None if taken is None else idle - {taken}


def named_after(real, options, edit) -> collections.Counter:
    """segment -> how many times ``options``' rules name it (a named segment keeps its
    identity): ``real``'s count, or that after ``edit`` (a RuleEdit) when it was made
    from ``real``'s rules, or counted afresh."""
    if options.rules is real.options.rules:
        return real.named
    if edit is not None and edit.made_from(real.options.rules):
        return edit.segment_counts(real.named)
    return collections.Counter(segment_mentions(options.rules))


def freed_by(existing: Mapping[str, int], segments: Iterable[str]) -> set:
    """Identities that allocating ``segments`` frees: those of segments not in it
    (a listed segment keeps its identity: ``segmentation.identities.assign``)."""
    wanted = set(segments)
    return {ident for seg, ident in existing.items() if seg not in wanted}


def allocate(allocator, network_id: str, segments, dns=None, backend=None) -> Mapping[str, int]:
    """``allocator.allocate(network_id, segments)``, after what DNS answers taught the
    identities it frees is revoked: through ``dns`` (the DnsService: its memory and the
    kernel) when it holds the network, else from the kernel through ``backend`` (its
    ``unlearn``: a restart before the network's first write, DNS learning off).

    Raises what the revocation raises (BackendError): then nothing is freed (fail
    closed: the verb fails, the identities stay with their idle segments).
    """
    freed = freed_by(allocator.identities(network_id), segments)
    if freed:
        unlearn(network_id, freed, dns, backend)
    return allocator.allocate(network_id, segments)


def unlearn(network_id: str, identities: set, dns=None, backend=None) -> int:
    """Revoke every learned address of ``identities``; how many elements (see :func:`allocate`)."""
    count = dns.unlearn(network_id, identities) if getattr(dns, "unlearn", None) else None
    if count is None:
        kernel = getattr(backend, "unlearn", None)
        count = kernel(network_id, identities) if kernel is not None else 0
    if count:
        log.info("network %s: revoked %d learned DNS address(es) of freed identities %s",
                 network_id[:12], count, sorted(identities))
    return count
