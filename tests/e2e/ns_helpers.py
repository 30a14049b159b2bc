"""Helpers of the north-south tests: probes that run on the host, in a namespace
of our own or in a container's network namespace, the suite's networks and
ports, and read-only looks at the published-port maps (the outside host is in
outside_host.py, the echo servers in ns_servers.py).

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
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import helpers as h
from plugin.driver.hostports import _bind_all

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


def probe_each(probes: list, timeout: float = 1.5) -> list:
    """Results of ``(where, dst, port, proto[, src])`` probes, in their order: every probe
    as :func:`probe` makes it (same timeout, bound to ``src`` when given), all at once (one
    prober per place, the places side by side), so that n denied probes wait out one
    timeout rather than n."""
    by_place: dict = {}
    for i, (where, dst, port, proto, *src) in enumerate(probes):
        p = {"id": str(i), "proto": proto, "dst": str(dst), "port": port}
        if src and src[0]:
            p["src"] = src[0]
        by_place.setdefault(place_of(where).label, (where, []))[1].append(p)
    with ThreadPoolExecutor(max_workers=len(by_place) or 1) as pool:
        done = list(pool.map(lambda wp: probe_many(wp[0], wp[1], timeout), by_place.values()))
    results = {k: r for part in done for k, r in part.items()}
    return [results[str(i)] for i in range(len(probes))]


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


def blocked_each(probes: list, tries: int = 2) -> list:
    """:func:`blocked` for each ``(where, dst, port, proto[, src])``, side by side
    (:func:`probe_each`): ``tries`` rounds, none may get an answer; returns the last
    round's results."""
    results = []
    for _ in range(tries):
        results = probe_each(probes)
        got = [f"{_what(*pr[:4])}: {r}" for pr, r in zip(probes, results) if r.ok]
        if got:
            raise AssertionError("expected not to reach, but did: " + "; ".join(got))
    return results


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
    the same binding secnet holds for a published port (plugin.driver.hostports)."""
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


@contextlib.contextmanager
def refused_publish(net, publish: str, what: str):
    """``docker run -d -p PUBLISH`` of a sleeping container on ``net``, expected to fail:
    yields the result, then removes what Docker left of the container (created)."""
    name = h.unique(what)
    try:
        yield docker_run_fails("--name", name, "--network", net.name, "-p", publish, h.IMAGE, *SLEEP)
    finally:
        h.docker("rm", "-f", name, check=False)


def addr(a: str) -> str:
    return str(ipaddress.ip_address(a))
