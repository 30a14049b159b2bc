"""The CLI's client: one HTTP-over-unix-socket call to the daemon, and
network names resolved through the engine (by the CLI, never by the daemon).

Raises :class:`CliError` (one line: what failed) for anything the user must see.

The CLI imports little at start-up (an empty ``secnet status`` is mostly Python's
own start): the daemon's settings module (dataclasses, the DNS store) only when a
``SECNET_*`` variable other than ``SECNET_SOCKET`` is set. A request is one HTTP/1.0
exchange written here on a unix socket (:func:`exchange`): ``http.client`` would cost
~20 ms of every command's start (its ``email`` header parser and ``ssl``) for answers
that are a status line and a JSON body. The socket is ``_socket``'s, the C type that
``socket.socket`` wraps (the wrapper's module builds its enums and imports ``selectors``:
~5 ms of CPU), a network name is percent-encoded here (:func:`quote`: ``urllib.parse``
imports ``ipaddress``, ~3 ms) and ``glob`` is imported only to look for a managed plugin's
socket (~3 ms with ``contextlib`` and ``fnmatch``).
"""
from __future__ import annotations

import _socket
import json
import os

DEFAULT_SOCKET = "/run/docker/plugins/secnet.sock"        # = plugin.config.Settings.socket
DEFAULT_DOCKER_HOST = "unix://var/run/docker.sock"         # = plugin.config.DEFAULT_DOCKER_HOST
_PLAIN = frozenset({"SECNET_SOCKET"})   # the only secnet variable the CLI itself reads


class CliError(Exception):
    pass


class UsageError(CliError):
    """The command line itself is wrong (exit status 2, as argparse's own usage errors)."""


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
    import glob
    found = glob.glob(os.path.join(os.path.dirname(default), "*", os.path.basename(default)))
    return found[0] if len(found) == 1 else ""


class BadAnswer(Exception):
    """The peer's answer is not HTTP."""


class AnswerLost(OSError):
    """The request was sent whole, then no answer came (timeout, closed): what it asked
    may have been done."""


def exchange(path: str, method: str, target: str, body: bytes | None = None,
             timeout: float = 30.0) -> tuple:
    """One HTTP/1.0 request on the unix socket at ``path``; ``(status, body bytes)``.

    HTTP/1.0: the server closes the connection after its answer and never chunks it
    (gunicorn and the engine both). The body ends at its ``Content-Length`` or at the
    close. Raises OSError (no socket, refused, timeout) and BadAnswer (an answer that
    is not HTTP); AnswerLost, an OSError, when the request was sent and no whole answer came."""
    head = f"{method} {target} HTTP/1.0\r\nHost: localhost\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        try:
            return _answer(sock)
        except AnswerLost:
            raise
        except OSError as exc:   # a timeout, a reset
            raise AnswerLost(str(exc) or type(exc).__name__) from None
    finally:
        sock.close()


def _answer(sock) -> tuple:
    """``(status, body)`` read from ``sock`` (BadAnswer when it is not HTTP)."""
    data, length, end = bytearray(), None, -1   # bytearray: appending is linear in the answer
    while length is None or len(data) < end + 4 + length:
        chunk = sock.recv(262144)
        if not chunk:
            break
        data += chunk
        if end < 0 and (end := data.find(b"\r\n\r\n")) >= 0:
            length = _content_length(data[:end])
    if not data:
        raise AnswerLost("the connection was closed without an answer")
    if end < 0:
        raise BadAnswer("no HTTP header in the answer")
    status = bytes(data[:end]).split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise BadAnswer("no HTTP status line in the answer")
    body = bytes(data[end + 4:])
    return int(status[1]), body if length is None else body[:length]


def _content_length(head: bytes):
    """The ``Content-Length`` of a header block (bytes), None when it has none."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def call(path: str, body: dict, timeout: float = 30.0) -> dict:
    sock = socket_path()
    try:
        _status, raw = exchange(sock, "POST", path, json.dumps(body).encode(), timeout)
    except AnswerLost as exc:
        raise DaemonUnreachable(f"the secnet daemon at {sock} took the request but did not answer ({exc}):"
                                " a change it asked for may be in force or not; look before trying again"
                                " (secnet policy NETWORK, secnet mode NETWORK)") from None
    except (OSError, BadAnswer) as exc:
        if not os.path.exists(sock):
            hint = " (is the daemon running? for a managed plugin set SECNET_SOCKET to its socket)"
        elif isinstance(exc, ConnectionRefusedError):   # a socket file an ended daemon left
            hint = " (the socket is there but no daemon listens on it: is the daemon running?)"
        else:
            hint = ""
        raise DaemonUnreachable(f"cannot reach the secnet daemon at {sock}: {exc}{hint}") from None
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise CliError("the daemon sent an answer that is not JSON") from None
    if isinstance(data, dict) and data.get("Err"):
        raise CliError(data["Err"])
    return data


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(text: str) -> str:
    """``text`` as one URL path segment: ``urllib.parse.quote(text, safe="")`` (every
    UTF-8 byte but the unreserved characters of RFC 3986 section 2.3 as ``%XX``)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


#: the refs :func:`resolve_network` could not map because the engine did not answer
UNMAPPED: set = set()


#: network id -> name, of the networks :func:`resolve_network` looked up (same answer: no request more)
NAMES: dict = {}


def resolve_network(ref: str) -> str:
    """Network name or id → id, through the engine when it answers (else ``ref`` as given:
    the daemon takes ids and id prefixes). A ref the engine was not reached for is put in
    :data:`UNMAPPED` (an answer such as 404 is no miss: the engine knows no such network)."""
    try:
        info = _engine("/networks/" + quote(ref), lambda api: api.inspect_network(ref))
        NAMES[info["Id"]] = info.get("Name") or ""
        return info["Id"]
    except Exception as exc:
        # answered: our LookupError for a non-200 status, the SDK's APIError (a response)
        if not isinstance(exc, LookupError) and getattr(exc, "response", None) is None:
            UNMAPPED.add(ref)
        return ref


def network_names() -> dict:
    """``{network id: name}`` of every network the engine knows; ``{}`` when the
    engine does not answer (the CLI then shows ids, as the daemon knows no names)."""
    try:
        return {n["Id"]: n["Name"] for n in _engine("/networks", lambda api: api.networks())}
    except Exception:
        return {}


def _engine(path: str, sdk_call):
    """The engine's answer to GET ``path``: on a unix socket (the usual case) one request,
    no docker SDK to import; else (tcp://, ssh://) ``sdk_call(docker.APIClient)``."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    if host.startswith("unix://"):
        return _engine_get(host[len("unix://"):], path)
    import docker
    return sdk_call(docker.APIClient(base_url=host, timeout=5))


def _engine_get(sock: str, path: str) -> dict:
    """GET ``path`` of the engine API on unix socket ``sock``: the JSON answer
    (OSError, BadAnswer, ValueError, LookupError when there is none)."""
    status, body = exchange("/" + sock.lstrip("/"), "GET", path, timeout=5.0)
    if status != 200:
        raise LookupError(f"engine answered {status}")
    return json.loads(body)
