"""The outside host of the north-south tests: a network namespace of our own
behind a veth on the host (another machine on the host's LAN), its servers, a
way to route 127.0.0.1 over the link, and a lock so that one runs at a time."""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Optional

import pytest

import helpers as h
from ns_helpers import (HOST, HOST4, HOST6, HOST_TCP, HOST_UDP, OUT4, OUT6, OUT_TCP, OUT_UDP, in_netns, place_of,
                        reaches)
from ns_servers import Server, Servers

def _ip(*args, check=True):
    return h.run(["ip", *args], check=check)


def _sysctl_get(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def _sysctl_set(key: str, value: str) -> None:
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


class Outside:
    """A network namespace behind a veth pair: the rest of the world, in miniature."""

    SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.netns = f"snout-{tag}"
        self.veth_host = f"snxh{tag}"    # our own link: no secnet alias, secnet never touches it
        self.veth_ns = f"snxn{tag}"
        self.place = in_netns(self.netns)
        self.servers = Servers()
        self.host_server: Optional[Server] = None
        self._undo: list = []

    # set-up and tear-down
    @staticmethod
    def remove_stale() -> None:
        """Remove what a killed run of this suite left (call with the lock held: no run is live)."""
        for line in _ip("-br", "link").stdout.splitlines():
            name = line.split()[0].split("@")[0] if line.strip() else ""
            if name.startswith("snxh"):
                _ip("link", "del", name, check=False)
        for line in _ip("netns", "list").stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith("snout-"):
                _ip("netns", "del", name, check=False)

    def create(self) -> "Outside":
        self.remove_stale()
        for line in _ip("-br", "addr").stdout.splitlines():
            assert f" {HOST4}/" not in f" {line} " and HOST6 + "/" not in line, \
                f"{HOST4}/{HOST6} is already on a link (another run?): {line}"
        try:
            for key, value in self.SYSCTLS.items():
                old = _sysctl_get(key)
                self._undo.append(lambda key=key, old=old: _sysctl_set(key, old))
                _sysctl_set(key, value)
            _ip("netns", "add", self.netns)
            self._undo.append(lambda: _ip("netns", "del", self.netns, check=False))
            _ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
            self._undo.append(lambda: _ip("link", "del", self.veth_host, check=False))
            _ip("link", "set", self.veth_ns, "netns", self.netns)
            _ip("addr", "add", f"{HOST4}/24", "dev", self.veth_host)
            _ip("addr", "add", f"{HOST6}/64", "dev", self.veth_host, "nodad")
            _ip("link", "set", self.veth_host, "up")
            n = ("-n", self.netns)
            _ip(*n, "link", "set", "lo", "up")
            _ip(*n, "addr", "add", f"{OUT4}/24", "dev", self.veth_ns)
            _ip(*n, "addr", "add", f"{OUT6}/64", "dev", self.veth_ns, "nodad")
            _ip(*n, "link", "set", self.veth_ns, "up")
            _ip(*n, "route", "add", "default", "via", HOST4)
            _ip(*n, "-6", "route", "add", "default", "via", HOST6)
            self._undo.append(self.servers.stop_all)
            self.servers.start(self.place, "outside", tcp=OUT_TCP, udp=OUT_UDP,
                               binds=[[4, "0.0.0.0"], [6, "::"]])
            self.host_server = self.servers.start(HOST, "host", tcp=(HOST_TCP,), udp=(HOST_UDP,),
                                                  binds=[[4, HOST4], [6, HOST6]])
            # the link works both ways before any test relies on it
            reaches(self.place, HOST4, HOST_TCP, within=5)
            reaches(self.place, HOST6, HOST_TCP, within=5)
            reaches(HOST, OUT4, 443, within=5)
            reaches(HOST, OUT6, 443, within=5)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        errors = []
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            raise AssertionError("outside host clean-up failed: " + "; ".join(errors))

    @property
    def server(self) -> Server:
        return self.servers.all[0]

    @contextlib.contextmanager
    def loopback_routed_to_host(self):
        """The namespace sends 127.0.0.1 to the host over the link (what a neighbour on the
        host's LAN can do)."""
        with loopback_routed(self.place, self.veth_ns, HOST4, OUT4):
            yield


@contextlib.contextmanager
def loopback_routed(where, ifname: str, via: str, src: str):
    """Make ``where`` (a netns of our own) route 127.0.0.1 over ``ifname`` to ``via``
    instead of to its own loopback, as a neighbour (or a container with NET_ADMIN, or one
    crafting frames with CAP_NET_RAW) can; restore its loopback routes after."""
    place = place_of(where)
    ip = lambda *a, check=True: h.run(place.cmd("ip", *a), check=check)  # noqa: E731
    sysctl = lambda v, check=True: h.run(  # noqa: E731
        place.cmd("sysctl", "-qw", f"net.ipv4.conf.{ifname}.route_localnet={v}"), check=check)
    done = []
    try:
        for pfx in ("127.0.0.1", "127.0.0.0/8"):
            ip("route", "del", "local", pfx, "dev", "lo", "table", "local")
            done.append(pfx)
        ip("route", "add", "127.0.0.1/32", "via", via, "dev", ifname, "src", src)
        done.append("route")
        sysctl(1)
        yield
    finally:
        if "route" in done:
            ip("route", "del", "127.0.0.1/32", check=False)
        # 127.0.0.1 first and without a source: a route's source must already be local
        # ("Invalid prefsrc address"); then both as the kernel made them
        for pfx in [p for p in done if p != "route"]:
            ip("route", "add", "local", pfx, "dev", "lo", "table", "local", "proto", "kernel",
               "scope", "host", check=False)
        for pfx in [p for p in done if p != "route"]:
            ip("route", "replace", "local", pfx, "dev", "lo", "table", "local", "proto", "kernel",
               "scope", "host", "src", "127.0.0.1", check=False)
        sysctl(0, check=False)


LOCK = "/run/lock/secnet-e2e-outside.lock"


@contextlib.contextmanager
def exclusive(path: str = LOCK, within: float = 1200.0):
    """One outside host at a time on this machine: its addresses are fixed, and another run
    of this suite (another checkout, a full `make test`) may be using them."""
    import fcntl
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + within
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} stayed locked for {within:.0f} s (another run?)")
                time.sleep(1)
        yield
    finally:
        os.close(fd)  # releases the lock


@pytest.fixture(scope="module")
def outside():
    with exclusive():
        o = Outside().create()
        try:
            yield o
        finally:
            o.destroy()
