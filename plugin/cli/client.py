"""The CLI's client: one HTTP-over-unix-socket call to the daemon, and
network names resolved through the engine (by the CLI, never by the daemon).

Raises :class:`CliError` (one line: what failed) for anything the user must see.
"""
from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

from plugin.config import DEFAULT_DOCKER_HOST, Settings


class CliError(Exception):
    pass


class DaemonUnreachable(CliError):
    """The daemon's socket does not answer (it is down or restarting)."""


def settings() -> Settings:
    """The environment's settings; a bad value is a CliError naming the variable."""
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise CliError(str(exc)) from None


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def call(path: str, body: dict, timeout: float = 30.0) -> dict:
    sock = settings().socket
    conn = UnixHTTPConnection(sock, timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonUnreachable(f"cannot reach the secnet daemon at {sock}: {exc}") from None
    except ValueError:
        raise CliError("the daemon sent an answer that is not JSON") from None
    finally:
        conn.close()
    if isinstance(data, dict) and data.get("Err"):
        raise CliError(data["Err"])
    return data


def resolve_network(ref: str) -> str:
    """Network name or id → id, through the engine when it answers (else ``ref`` as given:
    the daemon takes ids and id prefixes)."""
    host = settings().docker_host or DEFAULT_DOCKER_HOST
    try:
        if host.startswith("unix://"):   # the usual case: one request, no docker SDK to import
            found = _engine_get(host[len("unix://"):], "/networks/" + quote(ref, safe=""))
        else:
            import docker  # tcp://, ssh://: the SDK knows how
            found = docker.APIClient(base_url=host, timeout=5).inspect_network(ref)
        return found["Id"]
    except Exception:
        return ref


def _engine_get(sock: str, path: str) -> dict:
    """GET ``path`` of the engine API on unix socket ``sock``: the JSON answer
    (OSError, HTTPException, ValueError, LookupError when there is none)."""
    conn = UnixHTTPConnection("/" + sock.lstrip("/"), 5.0)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise LookupError(f"engine answered {resp.status}")
        return json.loads(body)
    finally:
        conn.close()
