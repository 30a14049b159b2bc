"""Watch nftables change notifications (:mod:`plugin.kernel.nftevents`) in a thread.

Design: one daemon thread blocks in ``select()`` on a raw
``NETLINK_NETFILTER`` socket (:mod:`plugin.kernel.nftsocket`) and a wake-up
pipe (no CPU while nothing changes), decodes each datagram and calls the
subscribers. pyroute2's ``NFTSocket`` can join the group too (checked with
pyroute2 0.9.7), but its asyncio core cannot be woken from another thread to
stop. When the socket fails, the thread reopens it with backoff; after a gap
(reopen, or the kernel dropped notifications: ENOBUFS) subscribers get one
``resync`` event, meaning "anything may have changed: look again".

Subscribers run in the watcher thread: they must be quick, and use
:class:`plugin.kernel.debounced.Debouncer` to do real work elsewhere.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from typing import Callable, Optional

from plugin.kernel.nfgroups import NETLINK_ADD_MEMBERSHIP, SOL_NETLINK
from plugin.kernel.nftevents import RESYNC, NftEvent, first_portid, parse
from plugin.kernel.nftsocket import (NETLINK_DROP_MEMBERSHIP, NFNLGRP_NFTABLES, attach_port_filter,
                                     in_initial_pid_namespace, open_socket)

log = logging.getLogger(__name__)

PENDING_MAX = 1000     # events of one transaction held until its generation; beyond: a resync
BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0


class NftWatcher:
    """Calls subscribers with every :class:`NftEvent` of this network namespace.

    ``subscribe(callback, match=None)``: ``callback(event)`` for events for
    which ``match(event)`` is true (all when None); returns the callback.
    ``start()`` opens the socket in the caller's thread (so an error such as
    EPERM is raised there) and starts the thread; ``stop()`` ends it. A subclass
    listening to another group sets ``name``, ``parse`` (datagram -> events) and
    ``resync`` (plugin.kernel.tcwatch.TcWatcher).
    """

    name = "secnet-nftwatch"
    parse = staticmethod(parse)
    resync = RESYNC

    def __init__(self, opener: Callable[[], socket.socket] = open_socket, sleep=None):
        self._opener = opener
        self._subs: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._wake_r, self._wake_w = os.pipe()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self.events = 0      # delivered, for status and tests
        self.restarts = 0
        self._ignored: set = set()
        self._own_threads = False   # drop transactions committed by this process's threads
        self._pending: list = []    # events of the transaction in progress (with _own_threads)
        self._overflow = False
        self._paused = 0     # writers inside pause() .. resume()
        self._broken = False
        self.pauses = 0      # windows opened, for status and tests

    def subscribe(self, callback: Callable[[NftEvent], None], match=None):
        with self._lock:
            self._subs.append((match, callback))
        return callback

    def unsubscribe(self, callback) -> None:
        with self._lock:
            self._subs = [(m, c) for m, c in self._subs if c is not callback]

    def ignore_port(self, portid: int) -> None:
        """Deliver no event that netlink port ``portid`` caused (a writer's own
        changes: a 10,000-element edit announces every element). Dropped by a
        socket filter in the kernel where it takes one, else before decoding."""
        if not portid:
            return
        with self._lock:
            self._ignored.add(portid)
        if self._sock is not None:
            self._filter(self._sock)

    def _filter(self, sock) -> None:
        with self._lock:
            ports = set(self._ignored)
        if ports:
            try:
                attach_port_filter(sock, ports)
            except OSError as exc:
                log.debug("no socket filter (%s): own events are skipped in user space", exc)

    def ignore_own_threads(self) -> bool:
        """Deliver nothing of a transaction that a thread of this process committed (the
        daemon's own libnftables writes, whose socket's port id is libnftables' own):
        events are held until the transaction's ``generation`` event, whose ``pid``
        (the committing thread, as the initial pid namespace numbers it) tells; a thread
        of ours is one in ``/proc/self/task``. Only in the initial pid namespace, where
        those numbers are ours too; in another one (a managed plugin) every transaction
        is delivered, as without this. Returns whether it is on. More than
        :data:`PENDING_MAX` events of one transaction are held as one ``resync``."""
        self._own_threads = in_initial_pid_namespace()
        return self._own_threads

    def _take(self, event: NftEvent) -> None:
        if not self._own_threads or event.kind == "resync":
            self._pending, self._overflow = [], False
            self.deliver(event)
            return
        if event.object != "generation":
            if len(self._pending) < PENDING_MAX:
                self._pending.append(event)
            else:
                self._overflow = True
            return
        pending, overflow = self._pending, self._overflow
        self._pending, self._overflow = [], False
        if event.pid and os.path.exists(f"/proc/self/task/{event.pid}"):
            return   # our own transaction
        for held in ([self.resync] if overflow else pending):
            self.deliver(held)
        self.deliver(event)

    def pause(self) -> None:
        """Leave ``NFNLGRP_NFTABLES`` until the matching :meth:`resume` (calls nest).

        For a writer's own large batch, whose events are ignored anyway
        (:meth:`ignore_port`): nf_tables builds a notification for every set element
        only while some socket of the host listens on the group
        (``nf_tables_setelem_notify`` checks ``nfnetlink_has_listeners``, whose bitmap is
        per protocol, not per namespace): ~1.3 us of the transaction per element, ~40 %
        of a 10,000-element delta's kernel time (bench/results/2026-12-01-pset3.md).
        What others commit meanwhile goes unannounced: the writer compares the ruleset's
        generation before and after the window and calls :meth:`lost` when it moved by
        more than its own commit."""
        with self._lock:
            self._paused += 1
            self.pauses += 1
            if self._paused == 1:
                self._membership(NETLINK_DROP_MEMBERSHIP)

    def resume(self) -> None:
        """End a :meth:`pause`; the last one joins the group again (if that fails, the
        socket is reopened: a new one joins and subscribers get a ``resync``)."""
        with self._lock:
            self._paused -= 1
            if self._paused == 0:
                self._membership(NETLINK_ADD_MEMBERSHIP)

    def lost(self) -> None:
        """Changes may have gone unannounced (a paused window saw foreign commits):
        subscribers get one ``resync`` event."""
        self.deliver(self.resync)

    def _membership(self, option: int) -> None:
        sock = self._sock
        if sock is None:
            return   # the watcher reopens (joined) and announces a resync itself
        try:
            sock.setsockopt(SOL_NETLINK, option, NFNLGRP_NFTABLES)
        except OSError as exc:
            if option == NETLINK_ADD_MEMBERSHIP:   # never stay deaf: reopen
                log.warning("%s: cannot rejoin the group (%s): reopening", self.name, exc)
                self._broken = True
                os.write(self._wake_w, b"x")

    def start(self) -> "NftWatcher":
        if self._thread is None:
            self._sock = self._opener()
            self._filter(self._sock)
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def deliver(self, event: NftEvent) -> None:
        """Hand ``event`` to every matching subscriber; one failing never stops the rest."""
        with self._lock:
            subs = list(self._subs)
        self.events += 1
        for match, callback in subs:
            try:
                if match is None or match(event):
                    callback(event)
            except Exception:
                log.exception("%s: subscriber %r failed on %s", self.name, callback, event)

    def _run(self) -> None:
        delay = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                if self._sock is None:
                    self._sock = self._opener()
                    self._filter(self._sock)
                    self.restarts += 1
                    self._take(self.resync)  # what changed while nobody listened is unknown
                self._pump()
                delay = BACKOFF_MIN
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped notifications
                    log.warning("%s: events overran the socket buffer: resync", self.name)
                    self._take(self.resync)
                    continue
                log.warning("%s: event socket failed (%s); reopening in %.1f s", self.name, exc, delay)
                self._close()
                self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        self._close()

    def _pump(self) -> None:
        """Read and deliver until stopped; raises OSError on socket errors."""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock, self._wake_r], [], [])
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if self._broken:
                self._broken = False
                raise OSError(errno.EPIPE, "left the group")
            if self._sock in ready:
                data = self._sock.recv(1 << 20)
                if self._ignored and first_portid(data) in self._ignored:
                    continue
                for event in self.parse(data):
                    self._take(event)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
