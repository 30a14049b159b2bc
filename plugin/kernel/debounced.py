"""A change watcher whose events are checked in a debounced thread.

:class:`DebouncedWatch` holds what PortWatch (plugin.driver.portwatch: veths put back on
their bridges) and HookWatch (plugin.enforce.ebpf.hookwatch: tc programs put back) share:
a watcher thread (a :class:`plugin.kernel.nftwatch.NftWatcher` or a subclass: link, tc)
whose matching events are recorded cheaply in that thread (:meth:`heard`), and a
:class:`Debouncer` that runs :meth:`check` once a burst is over.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from plugin.kernel.nftwatch import NftWatcher

log = logging.getLogger(__name__)


class Debouncer:
    """Runs ``action()`` in its own thread once a burst of triggers is over.

    ``trigger()`` is cheap and safe from any thread (e.g. an nft subscriber);
    ``action`` runs ``delay`` seconds after the first trigger of a burst
    (triggers during that window fold into the same run; a trigger during
    the run schedules one more run). With ``every`` (seconds), it also runs
    that long after the last run when nothing triggered it: a slow periodic
    pass for changes no event announces. ``runs`` counts completed runs.
    """

    def __init__(self, action: Callable[[], None], delay: float = 0.1,
                 every: Optional[float] = None, name: str = "secnet-debounce"):
        self.action, self.delay, self.every = action, delay, every
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.runs = 0

    def start(self) -> "Debouncer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._pending.set()

    def trigger(self, _event=None) -> None:
        self._pending.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait(self.every)
            if self._stop.is_set():
                return
            if self._pending.is_set():
                self._stop.wait(self.delay)   # let the burst finish
            self._pending.clear()
            try:
                self.action()
            except Exception:
                log.exception("%s failed", self._thread.name)
            self.runs += 1


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
