"""Join's engine lookup, begun as soon as CreateEndpoint has answered.

Between the driver's CreateEndpoint and its Join, dockerd records the endpoint,
fills the container's network settings and makes its sandbox (a network
namespace); from the moment the endpoint is recorded, ``GET /networks/{id}``
lists it as ``ep-<EndpointID>`` with the container's name (the same lock-free
reads :mod:`plugin.driver.labels` makes at Join). So the two reads can be made
while dockerd makes the sandbox, off `docker run`'s path, and Join takes their
answer instead of waiting for two engine round trips of its own.

What is kept is only what the engine answered -- (container name, id, labels)
-- never a segment: Join decides the segment from it with the network's
options of that moment. Anything but an answer (the endpoint not listed within
``window``, an error, a lookup not begun when Join comes) gives Join nothing,
and Join looks itself, as without this module: fail closed is unchanged.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Callable, Optional

log = logging.getLogger(__name__)

DELAY = 0.002     # s before the first read: CreateEndpoint's answer is still on its way
RETRY = 0.005     # s between reads while the engine does not list the endpoint yet
WINDOW = 0.25     # s after which a lookup gives up (Join then looks itself)
LIMIT = 256       # lookups kept at once (endpoints created, not joined nor deleted)


class NotListedYet(LookupError):
    """The engine's network does not list the endpoint (yet): worth reading again."""


class EarlyLookups:
    """At most one lookup per endpoint id, one at a time on a thread of its own.

    ``lookup(network_id, endpoint_id, deadline) -> (name, container id, labels)``
    raises :class:`NotListedYet` while the engine does not list the endpoint (read
    again every ``retry`` s until ``window`` has passed, or until the endpoint is
    forgotten or Join stopped waiting) and anything else on failure (given up at once).
    """

    def __init__(self, lookup: Callable, delay: float = DELAY, retry: float = RETRY,
                 window: float = WINDOW, limit: int = LIMIT):
        self._lookup = lookup
        self.delay, self.retry, self.window, self.limit = delay, retry, window, limit
        self._lock = threading.Lock()
        self._pending: dict = {}          # endpoint id -> (Future of the answer, its stop Event)
        self._pool: Optional[ThreadPoolExecutor] = None   # made at first use: after the fork

    def begin(self, network_id: str, endpoint_id: str) -> None:
        """Start looking for ``endpoint_id``'s container (nothing if too many are kept)."""
        with self._lock:
            if endpoint_id in self._pending or len(self._pending) >= self.limit:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="secnet-early")
            stop = threading.Event()
            fut = self._pool.submit(self._run, network_id, endpoint_id, time.monotonic() + self.window, stop)
            self._pending[endpoint_id] = (fut, stop)

    def _run(self, network_id: str, endpoint_id: str, end: float, stop: threading.Event):
        """(answer, when) of the lookup, read again while the endpoint is not listed."""
        stop.wait(self.delay)
        while True:
            try:
                return self._lookup(network_id, endpoint_id, end), time.monotonic()
            except NotListedYet:
                if time.monotonic() + self.retry >= end or stop.wait(self.retry):
                    raise

    def take(self, endpoint_id: str, deadline: float) -> Optional[tuple]:
        """The engine's answer for ``endpoint_id``, waited for during at most half of
        what is left until ``deadline`` (``time.monotonic()``: Join keeps the other half
        for a lookup of its own); None when there is none: not begun, not started yet
        (cancelled), failed, not done in time, or answered more than ``window`` ago
        (a name may have changed since)."""
        with self._lock:
            fut, stop = self._pending.pop(endpoint_id, (None, None))
        if fut is None or fut.cancel():
            return None
        try:
            answer, at = fut.result(timeout=max(0.0, (deadline - time.monotonic()) / 2))
            return answer if time.monotonic() - at <= self.window else None
        except (CancelledError, Exception) as exc:   # Join looks itself
            stop.set()
            log.debug("endpoint %s: early lookup gave nothing (%s: %s)", endpoint_id[:12],
                      type(exc).__name__, exc)
            return None

    def forget(self, endpoint_id: str) -> None:
        """Drop what is kept for a deleted endpoint (a running lookup ends by itself)."""
        with self._lock:
            fut, stop = self._pending.pop(endpoint_id, (None, None))
        if fut is not None:
            stop.set()
            fut.cancel()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            for fut, stop in self._pending.values():
                stop.set()
                fut.cancel()
            self._pending.clear()
        if pool is not None:
            pool.shutdown(wait=False)
