"""Helpers of the north-south tests: an "outside host" network namespace,
echo servers and probes that run on the host, in that namespace or in a
container's network namespace, and read-only looks at the published-port maps.

Addresses: containers get subnets from 10.222.0.0/16 .. 10.223.0.0/16 and
fd00:222::/48; the outside host is 10.201.0.2/24 + fd00:201::2/64 behind the
host's 10.201.0.1/24 + fd00:201::1/64 on a veth pair of our own. Every probe
targets a container or namespace a test created, or the host's own addresses
on those links (or loopback).

Servers answer every TCP connection and UDP datagram with one line
``secnet-ok NAME PEER PORT``: who answered, the source address it saw (so
masquerade and de-NAT are checked) and the local port (so a port range maps
port by port). Background servers are children of the test process; they
exit when their stdin closes and are killed by pid when they do not.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import pytest

import helpers as h
from plugin.kernel.hostports import _bind_all

PY = sys.executable
REPLY = "secnet-ok"
SLEEP = ["sleep", "86400"]

OUT_NET4, OUT_NET6 = "10.201.0.0/24", "fd00:201::/64"
HOST4, HOST6 = "10.201.0.1", "fd00:201::1"          # the host's side of the outside link
OUT4, OUT6 = "10.201.0.2", "fd00:201::2"            # the outside namespace
OUT_TCP = (443, 8443)        # the outside host serves these (443 is named by rules, 8443 never)
OUT_UDP = (53,)
HOST_TCP, HOST_UDP = 19443, 19053   # a server of the host, bound to HOST4/HOST6 only

# --- programs run with PY (on the host or through nsenter) -------------------------

SERVER_SRC = r'''
import errno, json, os, socket, sys, threading
cfg = json.loads(sys.argv[1])
name, log = cfg["name"], cfg.get("log")
lock = threading.Lock()

def norm(a):
    return a[7:] if a.startswith("::ffff:") else a

def record(proto, port, peer):
    if log:
        with lock, open(log, "a") as f:
            f.write(f"{proto} {port} {peer}\n")

def answer(peer, port):
    return f"secnet-ok {name} {peer} {port}\n".encode()

def tcp_loop(s, port):
    while True:
        conn, peer = s.accept()
        threading.Thread(target=tcp_one, args=(conn, norm(peer[0]), port), daemon=True).start()

def tcp_one(conn, peer, port):
    record("tcp", port, peer)
    try:
        conn.settimeout(2)
        try:
            conn.recv(100)
        except OSError:
            pass
        conn.sendall(answer(peer, port))
    except OSError:
        pass
    finally:
        conn.close()

def udp_loop(s, port):
    while True:
        data, peer = s.recvfrom(2048)
        record("udp", port, norm(peer[0]))
        try:
            s.sendto(answer(norm(peer[0]), port), peer)
        except OSError:
            pass

started = 0
for proto, ports in (("tcp", cfg["tcp"]), ("udp", cfg["udp"])):
    for port in ports:
        for fam, addr in cfg["binds"]:
            af = socket.AF_INET6 if fam == 6 else socket.AF_INET
            s = socket.socket(af, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((addr, port))
            except OSError as exc:
                if fam == 6 and cfg.get("optional6") and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    s.close()
                    continue
                raise
            if proto == "tcp":
                s.listen(64)
            threading.Thread(target=tcp_loop if proto == "tcp" else udp_loop, args=(s, port),
                             daemon=True).start()
            started += 1
print("READY", started, flush=True)
sys.stdin.read()
os._exit(0)
'''

CLIENT_SRC = r'''
import json, socket, sys, threading
probes = json.load(sys.stdin)
out = {}

def one(p):
    fam = socket.AF_INET6 if ":" in p["dst"] else socket.AF_INET
    t = p.get("timeout", 1.5)
    s = socket.socket(fam, socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(t)
    try:
        if p.get("src"):
            s.bind((p["src"], 0))
        s.connect((p["dst"], p["port"]))
        s.sendall(b"ping\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(200)
            if not chunk:
                break
            data += chunk
            if p["proto"] == "udp":
                break
        res = {"reply": data.decode(errors="replace").strip()}
        if not data:
            res["err"] = "closed"
    except socket.timeout:
        res = {"err": "timeout"}
    except ConnectionRefusedError:
        res = {"err": "refused"}
    except OSError as exc:
        res = {"err": f"{exc.errno}:{exc.strerror}"}
    finally:
        s.close()
    out[p["id"]] = res

threads = [threading.Thread(target=one, args=(p,)) for p in probes]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
'''


# --- where a program runs ------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """The host, the outside namespace or a container: a command prefix."""

    label: str
    prefix: tuple = ()

    def cmd(self, *args) -> list:
        return [*self.prefix, *args]


HOST = Place("host")


def in_container(c: h.Container) -> Place:
    return Place(c.name, ("nsenter", f"--net={c.sandbox}"))


def in_netns(name: str) -> Place:
    return Place(name, ("ip", "netns", "exec", name))


def place_of(where) -> Place:
    return in_container(where) if isinstance(where, h.Container) else where


@dataclass
class Result:
    reply: str = ""
    err: str = ""

    @property
    def ok(self) -> bool:
        return self.reply.startswith(REPLY)

    @property
    def server(self) -> str:
        return self.reply.split()[1] if self.ok else ""

    @property
    def peer(self) -> str:
        """The source address the server saw."""
        return self.reply.split()[2] if self.ok else ""

    @property
    def port(self) -> int:
        return int(self.reply.split()[3]) if self.ok else 0

    def __str__(self) -> str:
        return self.reply if self.ok else f"not reached ({self.err or 'no answer'})"


def probe_many(where, probes: list, timeout: float = 1.5) -> dict:
    """Run probes concurrently from ``where``; id -> Result.

    probes: dicts with id, proto (tcp/udp), dst (address), port, optional src.
    """
    if not probes:
        return {}
    body = [dict(p, timeout=p.get("timeout", timeout)) for p in probes]
    place = place_of(where)
    res = h.run(place.cmd(PY, "-c", CLIENT_SRC), check=False, input=json.dumps(body), timeout=60)
    assert res.returncode == 0, f"probe from {place.label} failed: {res.stderr.strip()}"
    return {k: Result(**v) for k, v in json.loads(res.stdout).items()}


def probe(where, dst: str, port: int, proto: str = "tcp", timeout: float = 1.5, src=None) -> Result:
    p = {"id": "x", "proto": proto, "dst": str(dst), "port": port}
    if src:
        p["src"] = src
    return probe_many(where, [p], timeout)["x"]


def _what(where, dst, port, proto) -> str:
    d = f"[{dst}]" if ":" in str(dst) else str(dst)
    return f"{place_of(where).label} -> {d}:{port}/{proto}"


def reaches(where, dst, port: int, proto: str = "tcp", within: float = 8.0, server: str = None,
            src=None) -> Result:
    """``where`` gets an answer from ``dst:port`` within ``within`` seconds (from ``server``)."""
    deadline = time.monotonic() + within
    while True:
        r = probe(where, dst, port, proto, src=src)
        if r.ok:
            assert server is None or r.server == server, \
                f"{_what(where, dst, port, proto)} was answered by {r.server}, expected {server}"
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"expected to reach, but did not: {_what(where, dst, port, proto)}: {r}")
        time.sleep(0.3)


def blocked(where, dst, port: int, proto: str = "tcp", tries: int = 2, src=None) -> Result:
    """No probe of ``tries`` gets an answer; returns the last result (its error says how it failed)."""
    r = Result()
    for _ in range(tries):
        r = probe(where, dst, port, proto, src=src)
        if r.ok:
            raise AssertionError(f"expected not to reach, but did: {_what(where, dst, port, proto)}: {r}")
    return r


# --- background servers --------------------------------------------------------------
class Server:
    """An echo server (SERVER_SRC) running on the host, in a netns or a container."""

    def __init__(self, where, name: str, tcp=(), udp=(), binds=None, log_dir: str = None):
        self.place = place_of(where)
        self.name = name
        self.log = os.path.join(log_dir or tempfile.gettempdir(), f"srv-{name}-{uuid.uuid4().hex[:6]}.log")
        cfg = {"name": name, "tcp": list(tcp), "udp": list(udp), "log": self.log,
               "binds": binds or [[4, "0.0.0.0"], [6, "::"]], "optional6": binds is None}
        self.proc = subprocess.Popen(self.place.cmd(PY, "-c", SERVER_SRC, json.dumps(cfg)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            err = self.proc.stderr.read().strip() if self.proc.poll() is not None else ""
            self.stop()
            raise AssertionError(f"server {name} in {self.place.label} did not start: {err}")

    def seen(self) -> list:
        """(proto, port, peer address) of every connection/datagram served."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [tuple(line.split()) for line in f if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log)


class Servers:
    """The servers of one test; ``stop_all`` stops every one of them."""

    def __init__(self):
        self.all: list = []

    def start(self, where, name: str = None, tcp=(), udp=(), binds=None) -> Server:
        name = name or (where.name if isinstance(where, h.Container) else place_of(where).label)
        s = Server(where, name, tcp=tcp, udp=udp, binds=binds)
        self.all.append(s)
        return s

    def stop_all(self) -> None:
        errors = []
        for s in reversed(self.all):
            try:
                s.stop()
            except Exception as exc:
                errors.append(f"{s.name}: {exc}")
        self.all.clear()
        if errors:
            raise AssertionError("could not stop servers: " + "; ".join(errors))


@pytest.fixture
def servers(run_container):
    """Background servers; stopped before the test's containers are removed."""
    s = Servers()
    yield s
    s.stop_all()


# --- the outside host -------------------------------------------------------------------
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


# --- secnet networks in this suite's subnets ---------------------------------------------
def pick4() -> str:
    return f"10.{random.randint(222, 223)}.{random.randint(0, 255)}.0/24"


def pick6() -> str:
    return f"fd00:222:{random.randint(0, 0xffff):x}::/64"


def ns_network(make_network, name: str, opts: Optional[dict] = None, ipv6: bool = True,
               internal: bool = False, subnet: str = None) -> h.Network:
    last = None
    for _ in range(20):
        try:
            return make_network(name, ipv6=ipv6, subnet=subnet or pick4(),
                                subnet6=pick6() if ipv6 else None, opts=opts, internal=internal)
        except h.CommandFailed as exc:
            if "overlap" not in str(exc) or subnet:
                raise
            last = exc
    raise AssertionError(f"no free subnet in 10.222-223.0.0/16: {last}")


def gateway(net: h.Network, family: int = 4) -> str:
    """The network's gateway: the address of its bridge in ``family`` (the host's, too)."""
    bridge = net.bridge
    info = json.loads(h.run(["ip", "-j", f"-{family}", "addr", "show", "dev", bridge]).stdout)
    for a in (info[0].get("addr_info") or ()) if info else ():
        if a.get("scope") == "global":
            return a["local"]
    raise AssertionError(f"bridge {bridge} of {net.name} has no global IPv{family} address: {info}")


def free_port(lo: int = 18200, hi: int = 18999, count: int = 1, proto=("tcp", "udp")) -> int:
    """A first port of ``count`` consecutive host ports nobody holds (tcp and udp, v4 and v6)."""
    for _ in range(200):
        base = random.randint(lo, hi - count)
        if all(port_free(p, pr) for p in range(base, base + count) for pr in proto):
            return base
    raise AssertionError("no free host port found")


def port_free(port: int, proto: str = "tcp", addr: str = "") -> bool:
    """True when a socket can bind ``port`` (on every address of both families unless ``addr``):
    the same binding secnet holds for a published port (plugin.kernel.hostports)."""
    try:
        _port, socks = _bind_all(proto, addr, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        raise
    for s in socks:
        s.close()
    return True


@contextlib.contextmanager
def hold_port(port: int, proto: str = "tcp"):
    """Bind ``port`` on 0.0.0.0 (a program of the host holding it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", port))
        if proto == "tcp":
            s.listen(1)
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def counting(where, match: str, hook: str = "prerouting", priority: int = -400):
    """Count the packets that ``match`` (an nft match) at ``hook`` in ``where``'s netns, in a
    table of our own that only counts; yields a function returning the count."""
    place = place_of(where)
    table = "nstest_" + uuid.uuid4().hex[:8]
    script = (f"table inet {table} {{\n chain c {{\n"
              f"  type filter hook {hook} priority {priority}; policy accept;\n"
              f"  {match} counter\n }}\n}}\n")
    h.run(place.cmd("nft", "-f", "-"), input=script)

    def count() -> int:
        out = h.run(place.cmd("nft", "list", "table", "inet", table)).stdout
        m = re.search(r"counter packets (\d+)", out)
        return int(m.group(1)) if m else 0
    try:
        yield count
    finally:
        h.run(place.cmd("nft", "delete", "table", "inet", table), check=False)


# --- the datapath, read-only --------------------------------------------------------------
_ELEM = re.compile(r"([0-9a-f.:/]+) \. (tcp|udp|6|17) \. (\d+) : ([0-9a-f.:]+) \. (\d+)")
_PROTO = {"6": "tcp", "17": "udp"}


def pub_map(net: h.Network, family: int = 4) -> set:
    """Elements of the network's ``pub4``/``pub6`` map: (host key, proto, host port, addr, port)."""
    table = "secnet_" + net.id[:12]
    res = h.run(["nft", "list", "map", "inet", table, f"pub{family}"], check=False)
    assert res.returncode == 0, f"nft list map inet {table} pub{family}: {res.stderr.strip()}"
    return {(k, _PROTO.get(p, p), int(hp), a, int(cp)) for k, p, hp, a, cp in _ELEM.findall(res.stdout)}


def tables_present(net: h.Network) -> str:
    """Which of the network's nft tables exist right now (for failure messages)."""
    table = "secnet_" + net.id[:12]
    out = h.run(["nft", "list", "tables"], check=False).stdout
    return ", ".join(f"{fam} {table}: {'present' if f'table {fam} {table}' in out else 'MISSING'}"
                     for fam in ("inet", "bridge"))


def has_default_route(c: h.Container, family: int) -> bool:
    res = h.in_netns(c, "ip", f"-{family}", "route", "show", "default")
    return bool(res.stdout.strip())


def docker_run_fails(*args) -> subprocess.CompletedProcess:
    """``docker run -d`` that is expected to fail; returns the result."""
    return h.docker("run", "-d", *args, check=False)


def addr(a: str) -> str:
    return str(ipaddress.ip_address(a))
