"""An eBPF network whose veth hooks someone changed is repaired within ~0.1 s.

The gap it closes: ``tc filter del dev V ingress`` or ``tc qdisc del dev V clsact``
(another tool, an admin debugging) takes our program off a member's veth, and
what it sends then passes unjudged (with no br_netfilter on an eBPF bridge,
nothing else looks) -- until the periodic pass, 300 s later. A foreign filter
put before ours at our priority does the same (hooks.py).

How: :class:`plugin.kernel.tcwatch.TcWatcher` hears every tc change of the
namespace; the devices named are collected (:class:`~plugin.kernel.tcwatch.Links`)
and checked ``delay`` after a burst (:class:`~plugin.kernel.debounced.Debouncer`):
cheaply, per device (:func:`hooks.drifted`: is our program there, is anything
foreign before it). The daemon's own attaches (every join makes a clsact qdisc
and two filters, announced like anyone's; libbpf opens a new netlink socket per
call, so its port id cannot be ignored as nftwatch ignores the nft writer's)
pass the check and cost nothing more. A device that fails it gets our programs
back (``EbpfBackend.reattach``: foreign filters at our priority deleted, the
network's loaded programs attached again -- no reload, milliseconds); that
attach is announced too, and the next check proves it. Only when putting them
back fails, or the same drift is found again right after, is the network left
to the reconciler (``repair_network``: its full drift, a rewrite -- a reload
through the verifier, ~1 s here -- and no loop on drift a rewrite cannot
remove). A tc change touches only hooks: the maps are the periodic pass's.
Idle, the watcher thread sleeps in select().
"""
from __future__ import annotations

import logging

from plugin.enforce.backend import BackendError
from plugin.kernel.debounced import DebouncedWatch
from plugin.kernel.tcwatch import RESYNC, Links, TcWatcher, hook_change

from .hooks import drifted

log = logging.getLogger(__name__)


class HookWatch(DebouncedWatch):
    """Repairs the tc hooks of the networks of ``backends`` (those that attach to links)
    through ``reconciler``. ``start()`` opens the socket in the caller's thread and
    namespace (OSError, e.g. EPERM, is raised there); ``stop()`` ends both threads.
    ``reattached``: networks whose hooks it put back; ``checks``: checks run."""

    thread_name = "secnet-tcrepair"

    def __init__(self, reconciler, backends, delay: float = 0.1):
        super().__init__(delay)
        self.reconciler = reconciler
        self.backends = [b for b in backends if getattr(b, "attaches_to_links", False)]
        self.links = Links()
        self.reattached = self.checks = 0
        self._ipr = None   # the checking thread's rtnetlink socket (pyroute2), opened at its first check
        self._put_back: dict = {}   # network id -> the drift its last reattach answered

    def wanted(self) -> bool:
        return bool(self.backends)

    def opener(self) -> TcWatcher:
        return TcWatcher()

    def match(self, event) -> bool:
        return hook_change(event)

    def heard(self, event) -> None:
        self.links.add(event)

    def stop(self) -> None:
        super().stop()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def check(self) -> None:
        """Check the devices heard of since the last check (all after a resync)."""
        changed = self.links.take()
        self.checks += 1
        for backend in self.backends:
            for network_id, (problems, ifindexes) in self._drifted(backend, changed).items():
                if not problems:
                    self._put_back.pop(network_id, None)
                    continue
                log.warning("network %s: tc hooks changed behind secnet's back (%s); repairing",
                            network_id[:12], "; ".join(problems[:3]))
                again = self._put_back.get(network_id) == problems   # the last reattach did not hold
                if again or not self._reattach(backend, network_id, problems, ifindexes):
                    self.reconciler.repair_network(network_id)

    def _reattach(self, backend, network_id: str, problems: list, ifindexes: set) -> bool:
        try:
            backend.reattach(network_id, ifindexes)
        except BackendError as exc:   # the reconciler's rewrite is the next try
            log.error("network %s: cannot put our programs back: %s", network_id[:12], exc)
            return False
        self._put_back[network_id] = problems
        self.reattached += 1
        return True

    def _drifted(self, backend, links) -> dict:
        """hooks.drifted through this thread's socket (made anew after a failure, and the
        next check then looks at every device: those taken now went unchecked)."""
        if self._ipr is None:
            from plugin.kernel.links import IPRoute   # noqa: PLC0415
            self._ipr = IPRoute()
        try:
            return drifted(backend, links, self._ipr)
        except Exception:
            ipr, self._ipr = self._ipr, None
            ipr.close()
            self.links.add(RESYNC)
            raise
