"""Held host ports: what keeps a published port taken, as Docker's proxy does.

Docker's bridge driver holds every published host port bound (its
docker-proxy), so no other program can take it and a second `-p` of the same
port fails at `docker run`. secnet does the same with sockets it binds and
keeps (never listens on: the packets are DNAT'd to the container before they
could reach them). Releasing is closing the sockets.
"""
from __future__ import annotations

import errno
import socket
import threading
from typing import Optional

from plugin.driver.portmap import Binding, host_text
from plugin.errors import Conflict


class Reservations:
    """Host ports held open for published container ports, by endpoint."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict = {}  # endpoint id -> [socket, ...]

    def reserve(self, endpoint_id: str, bindings: list) -> tuple:
        """Bind every binding's host port; (proto, host_ip, host_port, container_port) each."""
        with self._lock:
            self._release(endpoint_id)
            socks, result = [], []
            try:
                for b in bindings:
                    port, held = self._bind_range(b)
                    socks += held
                    result.append((b.proto, b.host_ip, port, b.container_port))
            except Exception:
                for s in socks:
                    s.close()
                raise
            self._held[endpoint_id] = socks
            return tuple(result)

    def _bind_range(self, b: Binding):
        last_error: Optional[OSError] = None
        ports = [0] if b.host_port == 0 else range(b.host_port, b.host_port_end + 1)
        for port in ports:
            try:
                return _bind_all(b.proto, b.host_ip, port)
            except OSError as exc:
                last_error = exc
        where = f"{host_text(b.host_ip or '0.0.0.0')}:{b.host_port}"
        if b.host_port_end != b.host_port:
            where += f"-{b.host_port_end}"
        reason = "already in use" if last_error and last_error.errno == errno.EADDRINUSE else str(last_error)
        raise Conflict(f"cannot publish host port {where}/{b.proto}: {reason}")

    def release(self, endpoint_id: str) -> None:
        with self._lock:
            self._release(endpoint_id)

    def _release(self, endpoint_id: str) -> None:
        for s in self._held.pop(endpoint_id, ()):
            s.close()


def _bind_all(proto: str, host_ip: str, port: int):
    """Bind ``port`` on ``host_ip`` (both families when empty; ``::`` IPv6 only,
    IPV6_V6ONLY, as ``0.0.0.0`` is IPv4 only); (port, sockets)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    targets = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")] if not host_ip else \
        [(socket.AF_INET6 if ":" in host_ip else socket.AF_INET, host_ip)]
    socks = []
    try:
        for family, addr in targets:
            s = socket.socket(family, kind)
            socks.append(s)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((addr, port))
            except OSError as exc:
                if family == socket.AF_INET6 and not host_ip and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # no IPv6 on this host
                raise
            port = s.getsockname()[1]  # a chosen port (0) is then used for the other family
        return port, socks
    except Exception:
        for s in socks:
            s.close()
        raise
