"""Helpers of the segmentation tests: probes run inside containers' network
namespaces (a host program via nsenter, so the image needs no tools), the
secnet CLI, and the expected verdicts of the compiler. Servers and sniffers
are in nsprocs.py, the fail-closed racer in racer.py.

Subnets come from 10.237.0.0/16 .. 10.239.0.0/16 and fd00:237::/48 only.
Every probe targets an address of a container the test itself created.
"""
from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import helpers as h

PY = sys.executable
SECNET = str(h.ROOT / ".venv" / "bin" / "secnet")
REPLY = "secnet-ok"


# --- networks ----------------------------------------------------------------
def pick4() -> str:
    return f"10.{random.randint(237, 239)}.{random.randint(0, 255)}.0/24"


def pick6() -> str:
    return f"fd00:237:{random.randint(0, 0xffff):x}::/64"


def seg_network(make_network, name: str = "sn-seg", opts: Optional[dict] = None,
                ipv6: bool = True) -> h.Network:
    """A secnet network in this suite's own subnets (retries on overlap)."""
    last = None
    for _ in range(20):
        try:
            return make_network(name, ipv6=ipv6, subnet=pick4(),
                                subnet6=pick6() if ipv6 else None, opts=opts)
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
            last = exc
    raise AssertionError(f"no free subnet in 10.237-239.0.0/16: {last}")


def host_addr(subnet: str, n: int) -> str:
    """The n-th address of ``subnet`` (for --ip / --ip6)."""
    import ipaddress
    return str(ipaddress.ip_network(subnet)[n])


SLEEP = ["sleep", "86400"]


def run_many(run_container, net, specs, cmd=SLEEP) -> dict:
    """Start containers in parallel. specs: {key: labels-dict-or-None} -> {key: Container}."""
    with ThreadPoolExecutor(max_workers=min(16, len(specs))) as pool:
        futs = {k: pool.submit(run_container, net, k, labels=labels, cmd=cmd)
                for k, labels in specs.items()}
        return {k: f.result() for k, f in futs.items()}


# --- the CLI -------------------------------------------------------------------
def secnet(*args, check=False, timeout=60) -> subprocess.CompletedProcess:
    return h.run([SECNET, *args], check=check, timeout=timeout)


def show_json(net) -> dict:
    res = secnet("show", net.name, "--json", check=True)
    return json.loads(res.stdout)


def membership(net) -> dict:
    """container name -> segment, or ('quarantined', reason), or 'pending'."""
    data = show_json(net)
    out = {}
    for seg in data["segments"]:
        for m in seg["members"]:
            out[m["container"]] = seg["name"]
    for m in data["quarantined"]:
        out[m["container"]] = ("quarantined", m["reason"])
    for m in data["pending"]:
        out[m["container"] or m["endpoint"]] = "pending"
    return out


def wait_segments(net, expected: dict, within: float = 5.0) -> dict:
    """Wait until ``secnet show`` puts each container (name -> segment) where expected.

    A value ``"quarantined"`` matches any quarantine reason.
    """
    seen = {}

    def ok():
        nonlocal seen
        seen = membership(net)
        for name, seg in expected.items():
            got = seen.get(name)
            if seg == "quarantined":
                if not (isinstance(got, tuple) and got[0] == "quarantined"):
                    return False
            elif got != seg:
                return False
        return True

    deadline = time.monotonic() + within
    while not ok():
        if time.monotonic() > deadline:
            wrong = {n: (s, seen.get(n)) for n, s in expected.items()
                     if seen.get(n) != s and not (s == "quarantined" and isinstance(seen.get(n), tuple))}
            raise AssertionError(f"secnet show does not place the containers as expected "
                                 f"(name: (expected, shown)): {wrong}")
        time.sleep(0.1)
    return seen


# --- programs run inside a network namespace ----------------------------------
PROBE_SRC = r'''
import errno, json, select, socket, struct, sys, threading, time

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff

def fam(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET

def err(e):
    return "error:" + errno.errorcode.get(e.errno, str(e.errno))

def connect_probe(p, kind, exchange):
    """Connect a socket of ``kind`` from p["src"] to p["dst"]:p["port"], run ``exchange``."""
    s = socket.socket(fam(p["dst"]), kind)
    s.settimeout(p["timeout"])
    try:
        if p.get("src"):
            s.bind((p["src"], 0))
        s.connect((p["dst"], p["port"]))
        exchange(s)
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return err(e)
    finally:
        s.close()

def tcp(p):
    return connect_probe(p, socket.SOCK_STREAM, lambda s: None)

def udp_exchange(s):
    s.send(b"secnet-probe")
    s.recv(2048)

def udp(p):
    return connect_probe(p, socket.SOCK_DGRAM, udp_exchange)

def icmp(p):
    v6 = ":" in p["dst"]
    ident = p["ident"] & 0xffff
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        pkt = struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"secnet-probe"
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"secnet-probe"
        pkt = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    want = socket.inet_pton(fam(p["dst"]), p["dst"])
    try:
        if p.get("src"):
            s.bind((p["src"], 0))
        s.sendto(pkt, (p["dst"], 0))
        deadline = time.monotonic() + p["timeout"]
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                return "timeout"
            data, addr = s.recvfrom(4096)
            if socket.inet_pton(fam(p["dst"]), addr[0].split("%")[0]) != want:
                continue
            if not v6:
                data = data[(data[0] & 0xf) * 4:]
            if len(data) >= 6 and data[0] == (129 if v6 else 0) \
                    and struct.unpack("!H", data[4:6])[0] == ident:
                return "ok"
    except OSError as e:
        return err(e)
    finally:
        s.close()

probes = json.load(sys.stdin)
results = {}
def one(p):
    results[p["id"]] = {"tcp": tcp, "udp": udp, "icmp": icmp}[p["proto"]](p)
threads = [threading.Thread(target=one, args=(p,)) for p in probes]
for t in threads:
    t.start()
for t in threads:
    t.join()
json.dump(results, sys.stdout)
'''


# --- probes ----------------------------------------------------------------------
_ident = itertools.count(random.randint(1, 30000))


def addr_of(c: h.Container, family: int) -> str:
    a = c.ip if family == 4 else c.ip6
    assert a, f"{c.name} has no IPv{family} address"
    return a


def probe(src: h.Container, probes: list, timeout: float = 1.0) -> dict:
    """Run probes concurrently from ``src``'s netns.

    probes: dicts with id, proto (tcp/udp/icmp), dst (address), port, optional src
    (bind address). Returns id -> "ok" | "refused" | "timeout" | "error:E...".
    """
    if not probes:
        return {}
    body = []
    for p in probes:
        q = dict(p, timeout=min(timeout, 1.0))
        q.setdefault("ident", next(_ident) & 0xffff)
        body.append(q)
    res = h.run(["nsenter", f"--net={src.sandbox}", PY, "-c", PROBE_SRC], check=False,
                input=json.dumps(body), timeout=30)
    assert res.returncode == 0, f"probe in {src.name} failed: {res.stderr.strip()}"
    return json.loads(res.stdout)


def reached(result: str) -> bool:
    """A probe whose packets got to the destination and back (a refusal got back too)."""
    return result in ("ok", "refused")


def one(src: h.Container, dst, proto: str, port: Optional[int] = None, family: int = 4,
        bind: Optional[str] = None) -> str:
    """One probe from ``src`` to ``dst`` (a Container or an address)."""
    addr = addr_of(dst, family) if isinstance(dst, h.Container) else str(dst)
    p = {"id": "x", "proto": proto, "dst": addr, "port": port}
    if bind:
        p["src"] = bind
    return probe(src, [p])["x"]


def can(src, dst, proto, port=None, family=4, bind=None) -> bool:
    return reached(one(src, dst, proto, port, family, bind))


def eventually(src, dst, proto, port=None, family=4, within=5.0) -> None:
    """``src`` reaches ``dst`` within ``within`` seconds (for set-up, not for verdicts)."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = one(src, dst, proto, port, family)
        if reached(last):
            return
        time.sleep(0.2)
    raise AssertionError(f"{src.name} -> {getattr(dst, 'name', dst)} {proto}/{port} IPv{family}: "
                         f"{last} (expected to get through)")


def matrix(cells: list, retries: int = 2) -> dict:
    """Observe cells in parallel (one probe process per source container).

    cells: dicts with key, src (Container), dst (Container or address), proto, port,
    family, expected (bool), optional bind (source address). Returns key -> observed bool. A cell expected to pass but
    observed blocked is probed again (up to ``retries`` times: a first packet
    may meet a cold neighbour cache); a pass is never probed again.
    """
    observed: dict = {}
    todo = list(cells)
    matrix.retried = []
    for attempt in range(retries + 1):
        if attempt:
            matrix.retried.append(len(todo))
        by_src: dict = {}
        for c in todo:
            by_src.setdefault(c["src"].name, (c["src"], []))[1].append(
                {"id": c["key"], "proto": c["proto"], "port": c["port"], "src": c.get("bind"),
                 "dst": addr_of(c["dst"], c["family"]) if isinstance(c["dst"], h.Container)
                 else c["dst"]})
        with ThreadPoolExecutor(max_workers=max(1, len(by_src))) as pool:
            results = list(pool.map(lambda sp: probe(sp[0], sp[1]), by_src.values()))
        for r in results:
            for k, v in r.items():
                observed[k] = reached(v)
        todo = [c for c in todo if c["expected"] and not observed[c["key"]]]
        if not todo:
            break
        time.sleep(0.5)
    return observed


def cell_key(src_seg, dst_seg, proto, port, family) -> str:
    what = proto if port is None else f"{proto}/{port}"
    return f"{src_seg}->{dst_seg} {what} v{family}"


def diff_text(cells: list, observed: dict) -> str:
    lines = []
    for c in cells:
        if observed[c["key"]] != c["expected"]:
            lines.append(f"  {c['key']:<40} expected {'allow' if c['expected'] else 'DROP '}"
                         f"  observed {'allow' if observed[c['key']] else 'DROP '}"
                         f"  ({c['src'].name} -> {c['dst'].name})")
    return "\n".join(lines)


# --- expected verdicts ---------------------------------------------------------------
def compiled_policy(opts: dict, members: list, ipv6: bool = True):
    """The compiler's view of a network: opts as given to docker network create;
    members: [(Container, segment-or-None, quarantine-or-None)]."""
    from segmentation.compiler import compile_policy
    from segmentation.model import Member
    from segmentation.options import parse_network_options
    options = parse_network_options(opts, ipv6=ipv6)
    ms = [Member(endpoint_id=c.endpoint_id, segment=seg, ipv4=c.ip, ipv6=c.ip6, quarantine=q)
          for c, seg, q in members]
    return compile_policy(options, ms)


def expected(compiled, src_seg: str, dst_seg: str, proto: str, port: Optional[int]) -> bool:
    from segmentation.compiler import verdict
    return verdict(compiled, ("segment", src_seg), ("segment", dst_seg), proto, port).allowed
