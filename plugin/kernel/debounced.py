"""A change watcher whose events are checked in a debounced thread.

:class:`DebouncedWatch` holds what PortWatch (plugin.driver.portwatch: veths put back on
their bridges) and HookWatch (plugin.enforce.ebpf.hookwatch: tc programs put back) share:
a watcher thread (a :class:`plugin.kernel.nftwatch.NftWatcher` or a subclass: link, tc)
whose matching events are recorded cheaply in that thread (:meth:`heard`), and a
:class:`plugin.kernel.nftwatch.Debouncer` that runs :meth:`check` once a burst is over.
"""
from __future__ import annotations

from typing import Optional

from plugin.kernel.nftwatch import Debouncer, NftWatcher


class DebouncedWatch:
    """Subclasses give :meth:`opener` (a started-to-be watcher), :meth:`match` (which
    events count), :meth:`heard` (record one, quick: the watcher's thread) and
    :meth:`check` (the real work, on the debouncer's thread), and ``thread_name``.
    ``start()`` opens the watcher's socket in the caller's thread and namespace (OSError,
    e.g. EPERM, is raised there), unless :meth:`wanted` says there is nothing to watch;
    ``stop()`` ends both threads. ``delay``: seconds from the first event of a burst to
    the check."""

    thread_name = "secnet-debounced"

    def __init__(self, delay: float = 0.1):
        self.delay = delay
        self.watcher: Optional[NftWatcher] = None
        self.debouncer: Optional[Debouncer] = None

    def opener(self) -> NftWatcher:
        raise NotImplementedError

    def match(self, event) -> bool:
        raise NotImplementedError

    def heard(self, event) -> None:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError

    def wanted(self) -> bool:
        return True

    def start(self):
        if self.watcher is None and self.wanted():
            self.watcher = self.opener().start()
            self.debouncer = Debouncer(self.check, self.delay, name=self.thread_name).start()
            self.watcher.subscribe(self._heard, self.match)
        return self

    def stop(self) -> None:
        for part in (self.watcher, self.debouncer):
            if part is not None:
                part.stop()
        self.watcher = self.debouncer = None

    def _heard(self, event) -> None:
        self.heard(event)
        self.debouncer.trigger()


__all__ = ["DebouncedWatch"]
