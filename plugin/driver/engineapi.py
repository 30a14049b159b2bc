"""The two engine reads of a Join, over one kept-alive HTTP connection (stdlib ``http.client``).

The join-time label lookup (:mod:`plugin.driver.labels`) makes two read calls
inside a request dockerd waits on: ``GET /networks/{id}`` and ``GET
/containers/json``. Through docker-py's ``APIClient`` (``requests``) each took
2.2-2.9 ms against the local engine, of which the engine's own work is
0.5-1.2 ms (30-40 calls each, median, 2026-11-30): the rest is ``requests``
(environment proxies, hooks, adapters). This reader speaks the same two calls
as plain HTTP/1.1 on the engine's unix socket and keeps the connection open
between Joins (one reader per request thread). Everything else (the event
watcher, catch-up, engine detection) keeps docker-py.
"""
from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Optional


class EngineError(Exception):
    """The engine answered with an error status (its message in the text)."""


def unix_socket_path(base_url: str) -> Optional[str]:
    """The socket path of a ``unix://`` engine address (``unix://var/run/docker.sock``
    and ``unix:///var/run/docker.sock`` alike), None for any other scheme."""
    if not base_url.startswith("unix://"):
        return None
    path = base_url[len("unix://"):]
    return path if path.startswith("/") else "/" + path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EngineReader:
    """``inspect_network`` and ``containers`` as docker-py's ``APIClient`` has them
    (same arguments, same decoded JSON), on the unix socket ``path``.

    ``timeout`` (seconds) bounds each call's connect and every read; the caller
    may change it between calls. Raises OSError (socket, timeout),
    ``http.client.HTTPException`` or :class:`EngineError` (status >= 400).
    Not thread-safe: one reader per thread.
    """

    def __init__(self, path: str, timeout: float):
        self.path = path
        self.timeout = timeout
        self._conn: Optional[_UnixConnection] = None

    def inspect_network(self, network_id: str) -> dict:
        return self._get(f"/networks/{urllib.parse.quote(network_id, safe='')}")

    def containers(self, all: bool = False, filters: Optional[dict] = None) -> list:
        query = {"all": "1"} if all else {}
        if filters:
            query["filters"] = json.dumps(filters)
        return self._get("/containers/json" + ("?" + urllib.parse.urlencode(query) if query else ""))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _get(self, url: str):
        reused = self._conn is not None
        try:
            try:
                return self._request(url)
            except (ConnectionResetError, BrokenPipeError):   # RemoteDisconnected is one
                if not reused:
                    raise
                self.close()   # the engine closed the idle connection: once more, afresh
                return self._request(url)
        except BaseException:
            self.close()   # a half-read answer must not be the next call's
            raise

    def _request(self, url: str):
        if self._conn is None:
            self._conn = _UnixConnection(self.path, self.timeout)
        conn = self._conn
        conn.timeout = self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(self.timeout)
        conn.request("GET", url)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status >= 400:
            raise EngineError(f"GET {url.split('?')[0]}: {resp.status} {_message(body)}")
        return json.loads(body)


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))[:200]
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")
