"""The CLI's client: one HTTP-over-unix-socket call to the daemon, and
network names resolved through the engine (by the CLI, never by the daemon).

Raises :class:`CliError` (one line: what failed) for anything the user must see.
"""
from __future__ import annotations

import http.client
import json
import socket

from plugin.config import DEFAULT_DOCKER_HOST, Settings


class CliError(Exception):
    pass


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def call(path: str, body: dict, timeout: float = 30.0) -> dict:
    sock = Settings.from_env().socket
    conn = UnixHTTPConnection(sock, timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(f"cannot reach the secnet daemon at {sock}: {exc}") from None
    except ValueError:
        raise CliError("the daemon sent an answer that is not JSON") from None
    finally:
        conn.close()
    if isinstance(data, dict) and data.get("Err"):
        raise CliError(data["Err"])
    return data


def resolve_network(ref: str) -> str:
    """Network name or id → id, through the engine when it answers."""
    try:
        import docker  # imported here: only name resolution needs it
        client = docker.APIClient(base_url=Settings.from_env().docker_host or DEFAULT_DOCKER_HOST,
                                  timeout=5)
        return client.inspect_network(ref)["Id"]
    except Exception:
        return ref
