"""The CLI's client: one HTTP-over-unix-socket call to the daemon, and
network names resolved through the engine (by the CLI, never by the daemon).

Raises :class:`CliError` (one line: what failed) for anything the user must see.

The CLI imports little at start-up (an empty ``secnet status`` is mostly Python's
own start): the daemon's settings module (dataclasses, the DNS store) only when a
``SECNET_*`` variable other than ``SECNET_SOCKET`` is set. Requests go through
``http.client`` on a unix socket.
"""
from __future__ import annotations

import glob
import http.client
import json
import os
import socket
from urllib.parse import quote

DEFAULT_SOCKET = "/run/docker/plugins/secnet.sock"        # = plugin.config.Settings.socket
DEFAULT_DOCKER_HOST = "unix://var/run/docker.sock"         # = plugin.config.DEFAULT_DOCKER_HOST
_PLAIN = frozenset({"SECNET_SOCKET"})   # the only secnet variable the CLI itself reads


class CliError(Exception):
    pass


class DaemonUnreachable(CliError):
    """The daemon's socket does not answer (it is down or restarting)."""


def socket_path(env=None) -> str:
    """The daemon's socket: ``SECNET_SOCKET``, else the default, else (no socket there)
    the managed plugin's (:func:`managed_socket`).

    When any other ``SECNET_*`` variable is set, the environment is checked as the
    daemon checks it (``plugin.config.Settings.from_env``): a bad value is a
    CliError naming the variable."""
    env = os.environ if env is None else env
    sock = env.get("SECNET_SOCKET") or DEFAULT_SOCKET
    if any(k.startswith("SECNET_") and k not in _PLAIN for k in env):
        from plugin.config import Settings
        try:
            sock = Settings.from_env(env).socket
        except ValueError as exc:
            raise CliError(str(exc)) from None
    return sock if env.get("SECNET_SOCKET") else (managed_socket(sock) or sock)


def managed_socket(default: str = "") -> str:
    """The managed plugin's socket (``/run/docker/plugins/<plugin id>/secnet.sock``) when
    there is no legacy daemon's socket at ``default`` and exactly one such socket; else ``""``."""
    default = default or DEFAULT_SOCKET
    if os.path.exists(default):
        return ""
    found = glob.glob(os.path.join(os.path.dirname(default), "*", os.path.basename(default)))
    return found[0] if len(found) == 1 else ""


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client``'s connection on a unix socket at ``path``."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def exchange(path: str, method: str, target: str, body: bytes | None = None,
             timeout: float = 30.0) -> tuple:
    """One request on the unix socket at ``path``; ``(status, body bytes)``.

    Raises OSError (no socket, refused, timeout) and http.client.HTTPException
    (an answer that is not HTTP)."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, target, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def call(path: str, body: dict, timeout: float = 30.0) -> dict:
    sock = socket_path()
    try:
        _status, raw = exchange(sock, "POST", path, json.dumps(body).encode(), timeout)
    except (OSError, http.client.HTTPException) as exc:
        hint = "" if os.path.exists(sock) else \
            " (is the daemon running? for a managed plugin set SECNET_SOCKET to its socket)"
        raise DaemonUnreachable(f"cannot reach the secnet daemon at {sock}: {exc}{hint}") from None
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise CliError("the daemon sent an answer that is not JSON") from None
    if isinstance(data, dict) and data.get("Err"):
        raise CliError(data["Err"])
    return data


def resolve_network(ref: str) -> str:
    """Network name or id → id, through the engine when it answers (else ``ref`` as given:
    the daemon takes ids and id prefixes)."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        if host.startswith("unix://"):   # the usual case: one request, no docker SDK to import
            found = _engine_get(host[len("unix://"):], "/networks/" + quote(ref, safe=""))
        else:
            import docker  # tcp://, ssh://: the SDK knows how
            found = docker.APIClient(base_url=host, timeout=5).inspect_network(ref)
        return found["Id"]
    except Exception:
        return ref


def network_names() -> dict:
    """``{network id: name}`` of every network the engine knows; ``{}`` when the
    engine does not answer (the CLI then shows ids, as the daemon knows no names)."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        if host.startswith("unix://"):
            found = _engine_get(host[len("unix://"):], "/networks")
        else:
            import docker
            found = docker.APIClient(base_url=host, timeout=5).networks()
        return {n["Id"]: n["Name"] for n in found}
    except Exception:
        return {}


def _engine_get(sock: str, path: str) -> dict:
    """GET ``path`` of the engine API on unix socket ``sock``: the JSON answer
    (OSError, HTTPException, ValueError, LookupError when there is none)."""
    status, body = exchange("/" + sock.lstrip("/"), "GET", path, timeout=5.0)
    if status != 200:
        raise LookupError(f"engine answered {status}")
    return json.loads(body)
