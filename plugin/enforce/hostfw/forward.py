"""The one writer of what secnet needs *outside* its own tables to forward at all.

Which writer that is depends on the engine (``engine.decide``): iptables
DOCKER-USER rules (``dockerfw.DockerFirewall``) while Docker's firewall is
iptables or not yet known, secnet's own ``inet secnet-guard`` table
(``nftguard.NftGuard``) under Docker's nftables backend -- plus the
DOCKER-USER rules there too when the iptables FORWARD policy still says DROP
(left from an iptables era or the host's own firewall; Docker's nftables docs
tell users to accept their traffic in iptables then).

Those rules live in chains others own, so others remove them: ``iptables -F
DOCKER-USER``, a ``firewall-cmd --reload``, Docker rebuilding FORWARD when it
restarts. :meth:`ForwardFilter.interested` picks the nftables notifications
that may mean that (``nftwatch``); a :class:`~plugin.kernel.debounced.Debouncer`
then re-ensures every network's rules ~0.1 s after the burst, and once a
minute anyway (iptables-legacy announces nothing). The driver's verbs call
``ensure``/``remove`` as before; they never wait on the engine.
"""
from __future__ import annotations

import logging
import shutil
import threading
from typing import Optional

from plugin.kernel import engine
from plugin.kernel.debounced import Debouncer
from plugin.kernel.nftevents import NftEvent

log = logging.getLogger(__name__)
WATCHED_CHAINS = ("", "DOCKER-USER", "FORWARD")


class ForwardFilter:
    """``ensure(bridge, nid)``, ``remove(bridge, nid)``, ``owned()`` over the writers
    the current strategy needs; ``refusal()`` is the reason a new network cannot
    work (None when it can)."""

    def __init__(self, iptables, guard, debounce: float = 0.1, every: Optional[float] = 60.0,
                 which=shutil.which):
        self.iptables, self.guard, self._which = iptables, guard, which
        self.facts: Optional[engine.EngineFacts] = None
        self.strategy = engine.decide(None)
        self.repairs = 0          # passes that had to rewrite something
        self._nets: dict = {}     # network id -> bridge, as the driver asked
        self._lock = threading.RLock()
        self._debouncer = Debouncer(self.repair, debounce, every, name="secnet-forward-repair")

    # --- what the driver calls ------------------------------------------
    def refusal(self) -> Optional[str]:
        strategy = self.strategy
        if not strategy.usable:
            return f"secnet cannot work with this engine: {strategy.reason}"
        if strategy.mode != engine.NFTABLES:
            missing = [b for b in getattr(self.iptables, "binaries", ()) if not self._which(b)]
            if missing:
                return (f"{' and '.join(missing)} not installed: secnet needs it for its DOCKER-USER "
                        "rules (Docker's iptables firewall drops other bridges' forwarded traffic)")
        return None

    def ensure(self, bridge: str, network_id: str) -> bool:
        with self._lock:
            self._nets[network_id] = bridge
            changed = False
            for writer in self._writers():
                changed |= bool(writer.ensure(bridge, network_id))
            return changed

    def remove(self, bridge: str, network_id: str) -> None:
        with self._lock:
            self._nets.pop(network_id, None)
            for writer in (self.iptables, self.guard):  # both: leave nothing behind
                writer.remove(bridge, network_id)

    def owned(self) -> list:
        return list(self.iptables.owned()) + list(self.guard.owned())

    # --- engine and kernel events ---------------------------------------
    def _writers(self) -> list:
        if self.strategy.mode != engine.NFTABLES:
            return [self.iptables]  # also UNKNOWN and UNSUPPORTED: fail closed as before
        if getattr(self.iptables, "forward_drops", lambda: False)():
            return [self.guard, self.iptables]
        return [self.guard]

    def set_facts(self, facts: engine.EngineFacts) -> None:
        """The engine (re)connected: adopt its strategy and re-ensure every network."""
        strategy = engine.decide(facts)
        with self._lock:
            old, self.facts, self.strategy = self.strategy, facts, strategy
            if old.mode != strategy.mode:
                log.info("forward filter: %s -> %s (%s)", old.mode, strategy.mode, strategy.reason)
                if strategy.mode != engine.NFTABLES:
                    self.guard.drop_all()
            if not strategy.usable:
                log.error("engine unsupported: %s", strategy.reason)
            self.repair()
            if strategy.mode == engine.NFTABLES and self.iptables not in self._writers():
                for nid, bridge in self._nets.items():
                    self.iptables.remove(bridge, nid)

    def engine_connected(self, client) -> None:
        """Hook for the Docker watcher: read /version and /info (watcher thread only)."""
        try:
            facts = engine.detect(client)
        except Exception as exc:  # keep the last strategy; the next reconnect tries again
            log.warning("cannot read the engine's version and firewall: %s", exc)
            return
        log.info("engine: Docker %s (API %s), firewall backend %s", facts.version,
                 facts.api_version, facts.firewall_backend or "(not reported: iptables)")
        self.set_facts(facts)

    @staticmethod
    def interested(event: NftEvent) -> bool:
        """True for changes that may have removed rules secnet keeps outside its tables."""
        if event.kind == "resync":
            return True
        if event.table == "secnet-guard":
            return event.kind == "delete"
        return (event.family in ("ip", "ip6") and event.table == "filter"
                and event.object in ("table", "chain", "rule") and event.chain in WATCHED_CHAINS)

    def trigger(self, event: Optional[NftEvent] = None) -> None:
        self._debouncer.trigger(event)

    def repair(self) -> int:
        """Re-ensure every network's rules; returns how many had to be rewritten.

        A writer with ``ensure_all`` (DockerFirewall) reads its tables once for every
        network; should that fail, each network is tried on its own.
        """
        with self._lock:
            nets, fixed = dict(self._nets), set()
            for writer in self._writers():
                fixed |= self._repair_with(writer, nets)
            if fixed:
                self.repairs += 1
                log.warning("forward filter: restored the rules of %d network(s)", len(fixed))
            return len(fixed)

    @staticmethod
    def _repair_with(writer, nets: dict) -> set:
        """Ids of the networks of ``nets`` (id -> bridge) whose rules ``writer`` rewrote."""
        if hasattr(writer, "ensure_all"):
            try:
                return set(writer.ensure_all(nets))
            except Exception as exc:
                log.warning("forward filter: repair of all networks at once failed (%s); one by one", exc)
        fixed = set()
        for nid, bridge in nets.items():
            try:
                if writer.ensure(bridge, nid):
                    fixed.add(nid)
            except Exception as exc:
                log.error("network %s: cannot restore forward rules: %s", nid[:12], exc)
        return fixed

    def start(self) -> "ForwardFilter":
        self._debouncer.start()
        return self

    def stop(self) -> None:
        self._debouncer.stop()

    def status(self) -> dict:
        out = engine.as_dict(self.facts, self.strategy)
        out["forward_repairs"] = self.repairs
        return out

