"""Container -> segment: a bounded lookup at Join, and a Docker event watcher.

Docker never sends a network driver the container's labels, so secnet asks
the engine itself, in two ways that must never hang a driver request:

* At Join (inside a request dockerd is waiting on, without a timeout, while
  it holds the container's lock) only lock-free calls are made:
  ``GET /networks/{id}`` already lists the joining endpoint under the key
  ``ep-<EndpointID>`` with the container's name, and ``GET /containers/json``
  (a list, which takes no container lock) returns its labels. Never
  ``GET /containers/{id}/json``: it waits for the container lock, which
  dockerd holds until our Join returns -- a deadlock. The two calls share one
  wall-clock deadline (``lookup_timeout``); on any failure the endpoint
  stays unresolved (segment ``None``: fail closed). The same two calls are
  begun when CreateEndpoint has answered (:mod:`plugin.driver.earlylookup`):
  Join takes their answer if they have one, else makes them itself.
* A daemon thread follows the engine's event stream (``network connect``)
  and resolves every endpoint that is still unresolved; on each (re)connect
  it first catches up on all of them.
* A container's name can change after it joined (``docker rename``; the
  event ``container rename`` carries the new name): the watcher follows
  those events, the catch-up re-reads every name, and a CLI command that
  looks containers up by name re-reads its network's names first
  (:meth:`LabelResolver.refresh_names`), so a name always means the
  engine's current holder of it. It blocks on the stream, so an idle
  daemon costs no CPU, and reconnects with exponential backoff when the
  engine is away (at engine start plugins come up before its API listens).

Each thread has its own Docker client: the request threads and the watcher
share nothing but the driver (which has its own lock).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Callable, Optional

from segmentation.resolve import decide_segment

from plugin.config import DEFAULT_DOCKER_HOST
from plugin.driver import outlived
from plugin.driver.earlylookup import EarlyLookups, NotListedYet
from plugin.driver.state import EndpointRecord, NetworkRecord

log = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
WATCH_CALL_TIMEOUT = 5.0  # per call made by the watcher thread (not in a request)
EVENT_FILTERS = {"type": ["network", "container"], "event": ["connect", "rename"]}
NAMES_TIMEOUT = 1.0  # a CLI command's look at the engine's current names


class LookupTimeout(Exception):
    """The join-time lookup ran out of its time budget."""


def needs_resolution(ep: EndpointRecord) -> bool:
    """True while the endpoint's segment is unknown or its container unnamed."""
    return (ep.segment is None and ep.quarantine is None) or ep.container is None


def _name_filter(name: str) -> dict:
    # Docker matches the name filter as a regexp against "/<name>".
    return {"name": [f"^/{re.escape(name)}$"]}


def _pick(rows, name: Optional[str] = None, cid: Optional[str] = None) -> Optional[dict]:
    """The row of ``/containers/json`` that is exactly this container."""
    for row in rows or ():
        if cid is not None and row.get("Id") == cid:
            return row
        if name is not None and "/" + name in (row.get("Names") or ()):
            return row
    return None


def _container_name(row: dict, fallback: Optional[str]) -> Optional[str]:
    names = row.get("Names") or ()
    return names[0].lstrip("/") if names else fallback


def _names_of(rows) -> dict:
    """container id -> name of ``/containers/json`` rows (unnamed ones left out)."""
    names = {row["Id"]: _container_name(row, None) for row in rows or ()}
    return {cid: n for cid, n in names.items() if n}


class LabelResolver:
    """Resolves endpoints' segments from their containers' labels.

    ``client_factory(timeout)`` returns a docker-py ``APIClient``-like object
    (``inspect_network``, ``containers``, ``events`` and a ``timeout``
    attribute); the default builds one for ``docker_host`` (else
    ``DOCKER_HOST``, else the local socket), lazily, never at import time.
    ``sleep(seconds)`` waits between reconnects (tests inject their own).
    """

    def __init__(self, docker_host: str = "", lookup_timeout: float = 0.5,
                 client_factory: Optional[Callable] = None, sleep: Optional[Callable] = None,
                 watch_timeout: float = WATCH_CALL_TIMEOUT):
        self.base_url = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        self.lookup_timeout = lookup_timeout
        self.watch_timeout = watch_timeout
        self._factory = client_factory or self._docker_client
        self._local = threading.local()  # one client per request thread (and the early one's)
        self.early = EarlyLookups(self._lookup_joining)
        self._stop = threading.Event()
        self._wake = threading.Event()   # ends a backoff wait early (stop, or the engine is back)
        self._sleep = sleep or self._wake.wait
        self._lock = threading.Lock()    # guards the fields below
        self._thread: Optional[threading.Thread] = None
        self._stream = None
        self._reported: set = set()      # endpoint ids whose miss was logged
        self.driver = None
        self.connects = 0                # successful stream (re)connects, for tests/status
        self.connect_hooks: list = []    # hook(client) on every (re)connect: the engine may be new

    def _docker_client(self, timeout: float):
        from plugin.kernel.lightimport import import_docker
        docker = import_docker()  # only here: nothing talks to Docker at import time
        client = docker.APIClient(base_url=self.base_url, timeout=timeout, version="auto")
        if client.base_url.startswith("http+docker://"):   # the engine's unix socket
            # no proxy can lie on a unix socket: requests' reading of the proxy settings of
            # the environment costs ~0.5 ms a call (join16's measure), so skip it
            client.trust_env = False
        return client

    # --- at Join -----------------------------------------------------------
    def resolve_at_join(self, net: NetworkRecord, ep: EndpointRecord) -> EndpointRecord:
        """``ep`` with its segment, looked up within ``lookup_timeout`` (else unchanged)."""
        if ep.segment_opt is not None:
            return ep.evolve(segment=ep.segment_opt, quarantine=None)
        started = time.monotonic()
        deadline = started + self.lookup_timeout
        try:
            early = self.early.take(ep.id, deadline)
            name, cid, labels = early or self._lookup_joining(net.id, ep.id, deadline)
            segment, quarantine = decide_segment(net.options, ep.segment_opt, labels)
        except Exception as exc:  # the engine is away, slow or odd: the watcher will do it
            log.info("endpoint %s: segment not resolved at join (%s: %s); left to the watcher",
                     ep.id[:12], type(exc).__name__, exc)
            return ep
        log.debug("endpoint %s: container %s -> segment %s%s in %.1f ms (%s)", ep.id[:12], name,
                  segment, f" (quarantine: {quarantine})" if quarantine else "",
                  (time.monotonic() - started) * 1000, "read early" if early else "read at join")
        self._wake.set()  # the engine answers: a watcher waiting to reconnect may go now
        return ep.evolve(container=name, container_id=cid, segment=segment, quarantine=quarantine)

    def expect(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        """CreateEndpoint made ``ep``: begin Join's lookup (:mod:`plugin.driver.earlylookup`)."""
        if ep.segment_opt is None:
            self.early.begin(net.id, ep.id)

    def _lookup_joining(self, nid: str, eid: str, deadline: float):
        """(name, container id, labels) of the container joining with endpoint ``eid``."""
        client = self._join_client(deadline)
        members = self._bounded(client, deadline, client.inspect_network, nid).get("Containers") or {}
        entry = members.get("ep-" + eid) or next(
            (m for m in members.values() if m.get("EndpointID") == eid), None)
        if not entry or not entry.get("Name"):
            raise NotListedYet(f"network {nid[:12]} does not list endpoint {eid[:12]}")
        name = entry["Name"]
        rows = self._bounded(client, deadline, client.containers, all=True, filters=_name_filter(name))
        row = _pick(rows, name=name)
        if row is None:
            raise LookupError(f"container {name} not listed")
        return name, row["Id"], row.get("Labels") or {}

    def _join_client(self, deadline: float):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._factory(timeout=self._remaining(deadline))
            self._local.client = client
        return client

    def _bounded(self, client, deadline: float, call, *args, **kwargs):
        """``call`` with the client's timeout cut to what is left of the deadline."""
        client.timeout = self._remaining(deadline)
        return call(*args, **kwargs)

    @staticmethod
    def _remaining(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LookupTimeout("lookup deadline passed")
        return left

    def forget(self, ep: EndpointRecord) -> None:
        """Drop what is kept about a deleted endpoint."""
        self.early.forget(ep.id)
        with self._lock:
            self._reported.discard(ep.id)

    # --- the watcher -------------------------------------------------------
    def start(self, driver) -> None:
        """Start the watcher thread (once) for ``driver``."""
        with self._lock:
            if self._thread is not None:
                return
            self.driver = driver
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="secnet-labels", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the watcher thread (and the early lookups' thread)."""
        self._stop.set()
        self._wake.set()
        self._close_stream()
        self.early.close()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # already closed, or the socket is gone
                log.debug("closing the event stream", exc_info=True)

    def _run(self) -> None:
        delay = BACKOFF_MIN
        while not self._stop.is_set():
            self._wake.clear()
            try:
                connected = self._follow_events()
                why = "the event stream ended"
            except Exception as exc:
                connected, why = False, f"{type(exc).__name__}: {exc}"
            finally:
                self._close_stream()
            if self._stop.is_set():
                break
            if connected:
                delay = BACKOFF_MIN
            (log.info if connected or delay == BACKOFF_MIN else log.debug)(
                "Docker events: %s; reconnecting in %.1f s", why, delay)
            self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        log.debug("label watcher stopped")

    def _follow_events(self) -> bool:
        """Open the stream, catch up, then handle events until the stream ends.

        Returns True once the stream was open (so the backoff starts afresh).
        """
        client = self._factory(timeout=self.watch_timeout)
        # ``since`` replays what happened while the stream was being opened;
        # replays are harmless: only unresolved endpoints are looked at.
        stream = client.events(since=int(time.time()) - 1, filters=EVENT_FILTERS, decode=True)
        with self._lock:
            self._stream = stream
        if self._stop.is_set():
            return True
        self.connects += 1
        log.info("following Docker network events")
        for hook in list(self.connect_hooks):
            try:
                hook(client)
            except Exception:
                log.exception("engine connect hook %r failed", hook)
        self.catch_up(client)
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                self._handle_event(client, event)
        except Exception as exc:  # a broken stream or an odd event: reconnect afresh
            log.info("Docker events: %s: %s", type(exc).__name__, exc)
        return True

    def drop_gone_networks(self, client) -> int:
        """Remove networks the engine no longer has (deleted while we were down).

        Only networks this process did not create are judged: Docker stores a network
        after the driver's CreateNetwork answered, so one created a moment ago is not
        listed yet (its removal here failed ``make demo`` right after a daemon start).
        Returns how many were removed."""
        from plugin.driver.protocol import NetworkRequest
        candidates = [net for net in self.driver.state.networks()
                      if net.id not in self.driver.created_since_start]
        if not candidates:
            return 0
        try:
            known = {n["Id"] for n in client.networks()}
        except Exception as exc:  # the engine is away or odd: keep everything
            log.info("cannot list the engine's networks: %s", exc)
            return 0
        removed = 0
        for net in candidates:
            if net.id not in known and net.id not in self.driver.created_since_start:
                log.warning("network %s is gone from the engine: removing it", net.id[:12])
                self.driver.delete_network(NetworkRequest(network_id=net.id))
                removed += 1
        return removed

    def refresh_names(self, network_id: Optional[str] = None, client=None) -> int:
        """Give endpoints their containers' current names (by container id):
        of network ``network_id``, else of every network. Returns how many
        changed; raises when the engine does not answer."""
        return self.driver.rename_containers(self._names(client, network_id))

    def _names(self, client=None, network_id: Optional[str] = None) -> dict:
        """container id -> current name, as the engine lists them (lock-free)."""
        client = client or self._factory(timeout=NAMES_TIMEOUT)
        filters = {"network": [network_id]} if network_id else None
        return _names_of(client.containers(all=True, filters=filters))

    def drop_gone_endpoints(self, client, live: dict, known: set) -> int:
        """Delete endpoints that outlived their container (removed, stopped, or
        restarted with another endpoint, while the daemon was down: Docker does
        not call DeleteEndpoint again; :mod:`plugin.driver.outlived` decides).
        ``live``: every container id the engine lists -> its state (``running``,
        ``exited``, ...); ``known``: ids of the endpoints that had a container
        before ``live`` was listed (an endpoint resolved since is not judged by
        an older list)."""
        from .protocol import EndpointRequest
        removed = 0
        for net in self.driver.state.networks():
            eps = [ep for ep in self.driver.state.endpoints(net.id) if ep.container_id and ep.id in known]
            if not eps:
                continue
            try:
                members = client.inspect_network(net.id).get("Containers") or {}
            except Exception as exc:  # this network is left for the next catch-up
                log.info("network %s: cannot list its members: %s", net.id[:12], exc)
                continue
            for ep in outlived.unlisted_but_active(eps, members, live):
                log.warning("endpoint %s of network %s: the engine lists no endpoint for its running"
                            " container %s; kept", ep.id[:12], net.id[:12], ep.container_id[:12])
            for ep, why in outlived.outlived(eps, members, live):
                log.warning("endpoint %s of network %s outlived its container %s (%s): removing it",
                            ep.id[:12], net.id[:12], ep.container_id[:12], why)
                self.driver.delete_endpoint(EndpointRequest(network_id=net.id, endpoint_id=ep.id))
                removed += 1
        return removed

    def catch_up(self, client) -> int:
        """Resolve every unresolved endpoint; returns how many were resolved."""
        self.drop_gone_networks(client)
        try:
            known = {ep.id for ep in self.driver.state.endpoints() if ep.container_id}
            rows = client.containers(all=True) or ()
            self.driver.rename_containers(_names_of(rows))
            self.drop_gone_endpoints(client, {row["Id"]: row.get("State") or "" for row in rows}, known)
        except Exception as exc:  # names and endpoints stay as they were; the next catch-up tries again
            log.info("cannot re-read containers: %s: %s", type(exc).__name__, exc)
        pending: dict = {}
        for ep in self.driver.state.endpoints():
            if needs_resolution(ep):
                pending.setdefault(ep.network_id, {})[ep.id] = ep
        total, resolved = sum(len(eps) for eps in pending.values()), 0
        for nid, eps in pending.items():
            try:
                resolved += self._resolve_network(client, nid, eps)
            except Exception as exc:
                log.info("catch-up of network %s failed: %s: %s", nid[:12], type(exc).__name__, exc)
        if total:
            log.info("catch-up: resolved %d of %d endpoints", resolved, total)
        return resolved

    def _handle_event(self, client, event: dict) -> None:
        if event.get("Type") == "container" and event.get("Action") == "rename":
            actor = event.get("Actor") or {}
            cid, name = actor.get("ID"), (actor.get("Attributes") or {}).get("name")
            if cid and name:
                self.driver.rename_containers({cid: name.lstrip("/")})
            return
        if event.get("Type") != "network" or event.get("Action") != "connect":
            return
        actor = event.get("Actor") or {}
        nid, cid = actor.get("ID"), (actor.get("Attributes") or {}).get("container")
        if not nid or self.driver.state.get_network(nid) is None:
            return  # not one of ours
        eps = {ep.id: ep for ep in self.driver.state.endpoints(nid) if needs_resolution(ep)}
        if not eps:
            return  # resolved at join: no Docker call at all
        try:
            self._resolve_network(client, nid, eps, only=cid)
        except Exception as exc:
            log.info("network %s: resolving after connect of %s failed: %s: %s", nid[:12],
                     str(cid)[:12], type(exc).__name__, exc)

    def _resolve_network(self, client, nid: str, eps: dict, only: Optional[str] = None) -> int:
        """Resolve the endpoints ``eps`` (id -> record) of network ``nid``.

        With ``only`` (a container id), only that container's endpoint when
        the network lists it under that id (as it does once the container has
        joined): endpoints of containers still starting in parallel get their
        own Join lookup and connect event. Otherwise every endpoint in ``eps``.
        """
        net = self.driver.state.get_network(nid)
        if net is None:
            return 0
        options, eps = net.options, dict(eps)
        members = client.inspect_network(nid).get("Containers") or {}
        narrowed = only in members
        if narrowed:
            members = {only: members[only]}
        resolved = 0
        for key, entry in members.items():
            eid = entry.get("EndpointID") or (key[3:] if key.startswith("ep-") else None)
            ep = eps.pop(eid, None)
            if ep is None:
                continue
            if key.startswith("ep-"):  # not started yet: only the name is known
                row = _pick(client.containers(all=True, filters=_name_filter(entry.get("Name", ""))),
                            name=entry.get("Name"))
            else:
                row = _pick(client.containers(all=True, filters={"id": [key]}), cid=key)
            if row is None:
                continue
            segment, quarantine = decide_segment(options, ep.segment_opt, row.get("Labels") or {})
            name = _container_name(row, entry.get("Name"))
            self.driver.apply_resolution(ep.id, name, row["Id"], segment, quarantine)
            log.info("endpoint %s: container %s -> segment %s (by the watcher)%s", ep.id[:12], name,
                     segment, f"; quarantined: {quarantine}" if quarantine else "")
            resolved += 1
        if not narrowed:
            self._report_missing(nid, eps)
        return resolved

    def _report_missing(self, nid: str, eps: dict) -> None:
        with self._lock:
            new = [eid for eid in eps if eid not in self._reported]
            self._reported.update(new)
        for eid in new:
            log.info("endpoint %s of network %s: Docker lists no container for it yet",
                     eid[:12], nid[:12])
