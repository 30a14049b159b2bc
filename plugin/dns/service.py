"""The daemon's DNS-learning service: the one object the daemon wires in.

It owns the queue reader, the learner, the store and the answer marks
(``plugin.enforce.nftables.dnsmarks``: which answers are held), knows for each network its bridge,
its policy map, its backend's :class:`~plugin.enforce.fqdn.FqdnDatapath` and
which container address has which identity (it is the learner's
:class:`~plugin.dns.learner.Targets`), and answers the read side (``show``,
``explain``). The reconciler tells it what it put in force:

* :meth:`network` after an apply of a network's policy (create, restore,
  policy delta: the policy map and all ports); the first time it hears of a
  network it adopts what the kernel still holds (a restart);
* :meth:`ports` after endpoint changes (joins, leaves: O(changes));
* :meth:`removed` when a network is gone.

Every datapath call goes through the network's backend and returns when the
kernel enforces it.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Iterable, Optional

from segmentation.identities import name_of

from plugin.kernel import netns as netns_mod

from .learner import DnsLearner, Target
from .queue import DnsQueue
from .store import LearnedStore, settings_from_env

log = logging.getLogger(__name__)


class _Datapaths:
    """The FqdnDatapath of each network (its backend), behind one FqdnDatapath."""

    def __init__(self):
        self.of: dict = {}    # network id -> FqdnDatapath

    def allow(self, network_id: str, grants) -> None:
        self.of[network_id].allow(network_id, grants)

    def revoke(self, network_id: str, keys) -> None:
        datapath = self.of.get(network_id)
        if datapath is not None:
            datapath.revoke(network_id, keys)

    def learned(self, network_id: str) -> list:
        return self.of[network_id].learned(network_id)


class DnsService:
    """See the module doc. ``marks``: an :class:`~plugin.enforce.nftables.dnsmarks.AnswerMarks`
    (its queue number is the one read here)."""

    def __init__(self, marks, store: Optional[LearnedStore] = None, netns: Optional[str] = None):
        self.queue_num = marks.queue_num
        self.marks = marks
        self.datapaths = _Datapaths()
        self.store = store if store is not None else LearnedStore(**settings_from_env())
        self.learner = DnsLearner(self, self.datapaths, self.store)
        self.queue = DnsQueue(self.queue_num, self.learner.on_packet, netns=netns)
        self.netns = netns
        self._lock = threading.RLock()
        self._nets: dict = {}       # network id -> (bridge, PolicyMap)
        self._ifindex: dict = {}    # network id -> the bridge's ifindex (0: unknown)
        self._targets: dict = {}    # address -> Target (single-key updates: read lock-free)
        self._addrs: dict = {}      # network id -> its addresses in _targets
        self._entries: dict = {}    # network id -> {identity: (FqdnEntry, ...)}
        self._marked: dict = {}     # network id -> addresses whose answers are held

    def start(self) -> None:
        """Read the queue; keep the marks and queue rules an earlier daemon left (the
        answers it held go on being held), or make them for what is marked already."""
        held = {a for addrs in self._marked.values() for a in addrs}
        if held or self.marks.present():
            self.marks.install(held, keep=True)
        self.queue.start()

    def settle(self) -> None:
        """After the daemon's first pass: no answer to hold, nothing of ours stays in
        the host's path (dnsmarks' table and queue rules go)."""
        with self._lock:
            self.marks.settle()

    def close(self) -> None:
        self.queue.stop()

    # --- what the reconciler tells --------------------------------------------------
    def network(self, network_id: str, bridge: str, policy, ports: Iterable, datapath=None) -> None:
        """``policy``: the network's PolicyMap now in force; ``ports``: its Port values;
        ``datapath``: the network's backend (its FqdnDatapath; default: unchanged).

        Cheap when only ports changed (a join): what was learned is touched
        only when the network's DNS rules changed, and the targets are rebuilt
        only when they are not already those of ``ports`` under these rules (a
        join that brings a segment no DNS rule names changes neither).
        """
        ports = list(ports)
        with self._lock:
            if datapath is not None:
                self.datapaths.of[network_id] = datapath
            old = self._nets.get(network_id, (None, None))[1]
            self._nets[network_id] = (bridge, policy)
            if old is None or network_id not in self._ifindex:
                self._ifindex[network_id] = self._bridge_index(bridge)
            if old is None or old.fqdns != policy.fqdns or not self._targets_of(network_id, ports):
                self._rebuild_targets(network_id, policy, ports)
            if old is None:
                self._restore(network_id, policy)
            elif old.fqdns != policy.fqdns:
                self.learner.policy_changed(network_id, policy.fqdns)

    def policy(self, network_id: str, policy) -> None:
        """The network's PolicyMap changed, but not its DNS rules (``policy.fqdns``) nor
        any port's identity (a new segment, an edit of other rules): O(1), nothing to
        rebuild. A network not told with :meth:`network` yet is left alone."""
        with self._lock:
            if network_id in self._nets:
                self._nets[network_id] = (self._nets[network_id][0], policy)

    def _restore(self, network_id: str, policy) -> None:
        try:
            count = self.learner.restore(network_id, policy.fqdns)
        except Exception as exc:   # nothing adopted: those names are learned again
            log.warning("network %s: learned DNS addresses not adopted: %s", network_id[:12], exc)
            return
        if count:
            log.info("network %s: adopted %d learned DNS address(es)", network_id[:12], count)

    def unlearn(self, network_id: str, identities) -> Optional[int]:
        """Revoke what segment identities ``identities`` learned (they are about to be
        freed: the next segment given one must start with nothing); how many elements.
        None when this service was not told of the network yet (a restart before its
        first write): then the caller revokes from the kernel. Raises BackendError."""
        with self._lock:
            if network_id not in self._nets:
                return None
            return self.learner.unlearn(network_id, identities)

    def reapply(self, network_id: str) -> int:
        """Put every address learned for ``network_id`` back into the kernel (after
        a repair of a flushed set); returns how many elements."""
        return self.learner.reapply(network_id)

    def repair(self) -> None:
        """Put back the marks and queue rules if someone removed them."""
        with self._lock:
            self.marks.repair()

    def removed(self, network_id: str) -> None:
        with self._lock:
            self._nets.pop(network_id, None)
            self._ifindex.pop(network_id, None)
            self.store.forget(network_id)
            for address in self._addrs.pop(network_id, ()):
                self._targets.pop(address, None)
            self._entries.pop(network_id, None)
            self._mark(network_id, set())
            self._marked.pop(network_id, None)
            self.datapaths.of.pop(network_id, None)

    def ports(self, network_id: str, changes: Iterable[tuple]) -> None:
        """Endpoint changes ``(old Port or None, new Port or None)`` of a network
        already told with :meth:`network` (a join, a leave): O(changes)."""
        with self._lock:
            if network_id not in self._nets:
                return
            marked = set(self._marked.get(network_id, ()))
            for old, new in changes:
                if old is not None:
                    self._drop_port(network_id, old)
                    marked -= set(old.addresses)
                if new is not None:
                    self._add_port(network_id, new)
                    if self._entries[network_id].get(new.identity):
                        marked |= set(new.addresses)
            self._mark(network_id, marked)

    def _mark(self, network_id: str, wanted: set) -> None:
        """Hold the answers to exactly ``wanted`` (addresses) of this network."""
        have = self._marked.get(network_id, set())
        if wanted != have:
            self.marks.change(wanted - have, have - wanted)
            self._marked[network_id] = wanted

    def _targets_of(self, network_id: str, ports: list) -> bool:
        """True when the targets of ``network_id`` are exactly ``ports``' addresses, each
        with its port's identity (then, with the same DNS rules, a rebuild changes nothing)."""
        count = 0
        for port in ports:
            for address in port.addresses:
                target = self._targets.get(address)
                if target is None or target.network_id != network_id or target.identity != port.identity:
                    return False
                count += 1
        return count == len(self._addrs.get(network_id, ())) and network_id in self._entries

    def _rebuild_targets(self, network_id: str, policy, ports: Iterable) -> None:
        by_identity: dict = {}
        for entry in policy.fqdns:
            by_identity.setdefault(entry.identity, []).append(entry)
        self._entries[network_id] = {i: tuple(sorted(e)) for i, e in by_identity.items()}
        stale = self._addrs.get(network_id, set())
        self._addrs[network_id] = set()
        marked = set()
        for port in ports:
            self._add_port(network_id, port)
            if port.identity in by_identity:
                marked |= set(port.addresses)
        for address in stale - self._addrs[network_id]:
            self._targets.pop(address, None)
        self._mark(network_id, marked)

    def _add_port(self, network_id: str, port) -> None:
        target = Target(network_id, port.identity, self._entries[network_id].get(port.identity, ()))
        for address in port.addresses:
            self._targets[address] = target
            self._addrs[network_id].add(address)

    def _drop_port(self, network_id: str, port) -> None:
        for address in port.addresses:
            if address in self._addrs.get(network_id, ()):
                self._addrs[network_id].discard(address)
                self._targets.pop(address, None)

    # --- Targets (the queue's thread) -------------------------------------------------
    def target(self, outdev: int, address: str) -> Optional[Target]:
        """The container ``address`` of the network whose bridge is ``outdev``."""
        target = self._targets.get(address)
        if target is None or not outdev:
            return target
        index = self._ifindex.get(target.network_id, 0)
        return target if index in (0, outdev) else None

    def _bridge_index(self, bridge: str) -> int:
        lookup = lambda: socket.if_nametoindex(bridge)
        try:
            return netns_mod.run_in(self.netns, lookup) if self.netns else lookup()
        except OSError:
            return 0

    # --- the read side ----------------------------------------------------------------
    def status(self) -> dict:
        """Counters for ``secnet status``: answers seen, addresses in force, refused at the
        bound; answers dropped before the learner (``budget_drops``: over one destination
        address's budget, the named counter of ``dnsmarks``, None when it cannot be read;
        ``queue_lost``: times the kernel reported answers it could not hand over, ENOBUFS;
        ``queue_dropped``: answers that arrived cut and were dropped unread)."""
        learner = self.learner
        try:
            budget = self.marks.budget_drops()
        except Exception as exc:  # NftError, OSError: the table is being repaired; say unknown
            log.debug("DNS budget counter not read: %s", exc)
            budget = None
        return {"queue": self.queue_num, "answers": learner.answers, "learned": len(self.store),
                "refused": self.store.refused_total, "failures": learner.failures,
                "budget_drops": budget, "queue_lost": self.queue.lost, "queue_dropped": self.queue.dropped,
                "bound_per_segment": self.store.max_per_segment,
                "bound_per_network": self.store.max_per_network, "bound_total": self.store.max_total}

    def tags(self, network_id: str) -> dict:
        """``tag -> frozenset of (identity, proto, lo, hi, rule)`` (``LearnedStore.tags``)."""
        return self.store.tags(network_id)

    def admitted(self, network_id: str) -> dict:
        """``(identity, address) -> {(rule, proto, lo, hi)}``: the rules whose answers
        taught each address, in force or not any more (``LearnedStore.admitted``)."""
        return self.store.admitted(network_id)

    def settled(self, network_id: str, policy) -> None:
        """The flows of rules no longer in ``policy`` were ended: forget what they taught."""
        self.store.settle(network_id, {(f.identity, f.rule) for f in policy.fqdns})

    def learned(self, network_id: str) -> dict:
        """``(segment, rule) -> {address: Learned}`` in force now (for ``verdict``)."""
        _bridge, policy = self._nets.get(network_id, (None, None))
        identities = dict(policy.identities) if policy is not None else {}
        return {(name_of(identity, identities), rule): addrs
                for (identity, rule), addrs in self.store.current(network_id).items()}
