"""The two engine reads of a Join, over the engine's unix socket with ``http.client``.

Join asks the engine who is joining (:mod:`plugin.driver.labels`): ``GET
/networks/{id}`` and ``GET /containers/json?all=1&filters=...``, both lock-free
in dockerd. Through the Docker SDK (requests + urllib3 over the socket) each costs
~1 ms of the daemon's CPU beyond the engine's answer: building a request,
merging session settings, a connection pool, a response object (bench/verbs.py's
profile, 2026-12-01). Here each is one ``http.client`` request on a connection
kept per thread (dockerd keeps idle connections open), answered as the SDK's
``inspect_network`` and ``containers`` answer (the decoded JSON).

The paths carry no API version: the engine then answers in its own (dockerd
routes unversioned paths to its current version, moby api/server/router); the
two answers' fields read here (``Containers`` with ``ep-<id>``/``EndpointID``/
``Name``; ``Id``/``Names``/``Labels``) are the same in every version since 1.24.
Only a unix-socket ``DOCKER_HOST`` is served here; any other (tcp, ssh, TLS) keeps
the SDK (:func:`for_host` returns None).
"""
from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Optional


class EngineError(Exception):
    """The engine answered something other than 200 (status and a short body)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixEngineClient:
    """``inspect_network`` and ``containers`` of the SDK's ``APIClient`` for a unix socket
    at ``path``; ``timeout`` (s, settable between calls) bounds each call's connect and
    each read. Not thread-safe: one per thread (as the resolver keeps its join clients)."""

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout = path, timeout
        self._conn: Optional[_UnixConnection] = None

    def inspect_network(self, net_id: str) -> dict:
        return self._get(f"/networks/{urllib.parse.quote(net_id, safe='')}")

    def containers(self, all: bool = False, filters: Optional[dict] = None) -> list:   # noqa: A002 (the SDK's name)
        query = {"all": "1" if all else "0"}
        if filters:
            query["filters"] = json.dumps(filters)
        return self._get("/containers/json?" + urllib.parse.urlencode(query))

    def _get(self, target: str):
        """The decoded JSON of ``GET target``; a kept connection the engine closed
        meanwhile is opened again once (a GET is safe to send twice). Raises OSError,
        http.client.HTTPException, EngineError or ValueError (not JSON)."""
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._conn or _UnixConnection(self.path, self.timeout)
            self._conn = None
            try:
                conn.timeout = self.timeout
                if conn.sock is not None:
                    conn.sock.settimeout(self.timeout)
                conn.request("GET", target, headers={"Accept": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused and attempt == 0:
                    continue
                raise
            if resp.status != 200:
                conn.close()
                raise EngineError(f"GET {target.split('?')[0]}: {resp.status} {body[:200]!r}")
            if not resp.will_close:
                self._conn = conn
            else:
                conn.close()
            return json.loads(body)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def socket_path(docker_host: str) -> Optional[str]:
    """The socket path of a ``unix://`` engine address (``unix:///var/run/docker.sock``,
    or the SDK's ``unix://var/run/docker.sock``), else None."""
    if not docker_host.startswith("unix://"):
        return None
    path = docker_host[len("unix://"):]
    return path if path.startswith("/") else "/" + path
