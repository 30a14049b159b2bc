"""From a queued DNS answer to addresses in force: match, bound, allow, then release.

:meth:`DnsLearner.on_packet` runs for each queued packet on the queue's
thread and returns only when what the answer taught is in the kernel; the
caller (``queue.py``) then accepts the packet. It never raises: a packet
it cannot use teaches nothing (its addresses stay denied) and still passes.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional, Protocol

from segmentation import fqdn

from .answers import TCP, addresses, datagram, messages
from .tcpstream import TcpStreams
from .store import LearnedStore

log = logging.getLogger(__name__)
DNS_PORT = 53
WARN_EVERY = 10.0   # seconds between two "bound reached" warnings per network


@dataclass(frozen=True)
class Target:
    """The container a DNS answer is going to, as policy sees it.

    ``entries``: the :class:`~segmentation.policymap.FqdnEntry` values of its
    segment (``identity``); empty when the segment has no DNS rule.
    """

    network_id: str
    identity: int
    entries: tuple = ()


class Targets(Protocol):
    def target(self, outdev: int, address: str) -> Optional[Target]:
        """The container with ``address`` behind bridge ifindex ``outdev`` (0: unknown)."""


class DnsLearner:
    """Learns addresses for DNS rules (see module doc). The queue's thread calls
    ``on_packet``; the reconciler's thread ``policy_changed`` and ``restore``."""

    def __init__(self, targets: Targets, datapath, store: LearnedStore):
        self.targets, self.datapath, self.store = targets, datapath, store
        self.answers = self.learned = self.failures = 0
        self._warned: dict = {}
        self.streams = TcpStreams()     # the queue's thread only
        # one writer at a time: an answer's plan -> allow -> commit never
        # interleaves with a policy change forgetting what a rule learned
        self._lock = threading.Lock()

    def on_packet(self, packet: bytes, outdev: int = 0) -> None:
        """Learn from one queued packet; returns when its addresses are in force."""
        try:
            self._learn(packet, outdev)
        except Exception:  # never let a packet take the queue down; it teaches nothing
            self.failures += 1
            log.exception("DNS answer not learned (its addresses stay denied)")

    def _learn(self, packet: bytes, outdev: int) -> None:
        dgram = datagram(packet)
        if dgram is None or dgram.sport != DNS_PORT:
            return
        target = self.targets.target(outdev, dgram.dst)
        if target is None or not target.entries:
            return
        wires = self.streams.messages(dgram) if dgram.proto == TCP else messages(dgram)
        found = [a for wire in wires for a in addresses(wire)]
        with self._lock:
            self.answers += 1
            # the target again: a policy change may have come in meanwhile
            target = self.targets.target(outdev, dgram.dst)
            entries = target.entries if target is not None else ()
            matched = [(e, a) for a in found for e in entries if fqdn.learns(e.pattern, a)]
            if matched:
                self._apply(target.network_id, matched)

    def _apply(self, network_id: str, matched: list) -> None:
        plan = self.store.plan(network_id, matched)
        if plan.refused:
            self._bound_reached(network_id, plan.refused)
        if plan.grants:
            self.datapath.allow(network_id, plan.grants)
        self.store.commit(plan)
        self.learned += len(plan.entries)

    def _bound_reached(self, network_id: str, refused: list) -> None:
        now = time.monotonic()
        if now - self._warned.get(network_id, -WARN_EVERY) >= WARN_EVERY:
            self._warned[network_id] = now
            rule, address = refused[0]
            log.warning("network %s: DNS learning bound reached (%d in the network, %d in all);"
                        " %s for rule %s not allowed (fail closed), %d refused so far",
                        network_id[:12], self.store.count(network_id), len(self.store), address,
                        rule, self.store.refused_total)

    def policy_changed(self, network_id: str, fqdns) -> None:
        """Drop what rules no longer in ``fqdns`` (the network's FqdnEntry set) learned."""
        with self._lock:
            revoke, regrant = self.store.forget(network_id, {(e.identity, e.rule) for e in fqdns})
            if regrant:
                self.datapath.allow(network_id, regrant)
            if revoke:
                self.datapath.revoke(network_id, revoke)

    def unlearn(self, network_id: str, identities) -> int:
        """Revoke what ``identities`` (about to be freed) learned; how many elements.
        Raises what the datapath raises (then the store has forgotten them already:
        the caller must not free the identities)."""
        with self._lock:
            revoke = self.store.forget_identities(network_id, identities)
            if revoke:
                self.datapath.revoke(network_id, revoke)
            return len(revoke)

    def reapply(self, network_id: str) -> int:
        """Write every element the store holds for ``network_id`` again; how many."""
        with self._lock:
            grants = self.store.grants(network_id)
            if grants:
                self.datapath.allow(network_id, grants)
            return len(grants)

    def restore(self, network_id: str, fqdns) -> int:
        """After a restart: adopt what the kernel still holds for ``network_id``
        (``fqdns``: the network's FqdnEntry set now) and revoke the elements no
        rule of now claims (a rule removed while the daemon was down); how many
        entries were adopted."""
        with self._lock:
            grants = self.datapath.learned(network_id)
            count = self.store.restore(network_id, grants, fqdns)
            held = {g.key for g in self.store.grants(network_id)}
            stale = sorted({g.key for g in grants} - held)
            if stale:
                self.datapath.revoke(network_id, stale)
            return count
