"""Long-lived flows for the e2e tier: a stream that sends one line every
0.2 s over one TCP connection or from one fixed UDP source port, and a sink
that logs every line it receives. They tell whether a flow that was going
on before a change (a policy edit, a container replaced) goes on after it.

Both run as host programs (``sys.executable``) on the host or, through
nsenter, in a container's network namespace; both are children of the test
process and are stopped by their pid. Addresses: 10.233.0.0/16 and
fd00:233::/48 (this suite's), loopback and the host's own addresses.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid

import helpers as h
import ns_helpers as n

PY = sys.executable

SINK_SRC = r'''
import json, socket, sys, threading
cfg = json.loads(sys.argv[1])
lock = threading.Lock()

def record(proto, line):
    with lock, open(cfg["log"], "a") as f:
        f.write(f"{proto} {line}\n")

def tcp_conn(conn):
    buf = b""
    while True:
        data = conn.recv(4096)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            record("tcp", line.decode(errors="replace"))

def tcp_loop(s):
    while True:
        conn, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(conn,), daemon=True).start()

def udp_loop(s):
    while True:
        data, _ = s.recvfrom(2048)
        record("udp", data.decode(errors="replace").strip())

for proto, port in cfg["listen"]:
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        if proto == "tcp":
            s.listen(16)
        threading.Thread(target=tcp_loop if proto == "tcp" else udp_loop, args=(s,), daemon=True).start()
print("READY", flush=True)
sys.stdin.read()
'''

STREAM_SRC = r'''
import json, socket, sys, time
cfg = json.loads(sys.argv[1])
fam = socket.AF_INET6 if ":" in cfg["dst"] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if cfg["proto"] == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
if cfg.get("sport"):
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", cfg["sport"]))
if cfg["proto"] == "tcp":
    s.settimeout(5)
    s.connect((cfg["dst"], cfg["port"]))
    s.setblocking(False)
print("READY", flush=True)
n = 0
while True:
    n += 1
    line = f"{cfg['tag']} {n}\n".encode()
    try:
        if cfg["proto"] == "tcp":
            s.send(line)
        else:
            s.sendto(line, (cfg["dst"], cfg["port"]))
    except (BlockingIOError, OSError):
        pass  # a full send buffer (the flow is dropped) or an ICMP error: go on
    time.sleep(0.2)
'''


class _Child:
    """A background program of ours; ``stop`` ends it by its pid."""

    def __init__(self, place, src: str, cfg: dict, what: str):
        self.what = what
        self.proc = subprocess.Popen(place.cmd(PY, "-c", src, json.dumps(cfg)), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            err = self.proc.stderr.read().strip() if self.proc.poll() is not None else ""
            self.stop()
            raise AssertionError(f"{what} did not start: {err}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                f.close()


class Sink(_Child):
    """Logs every line received on ``listen`` ([(proto, port)]) in ``where``."""

    def __init__(self, where, listen):
        self.log = os.path.join(tempfile.gettempdir(), f"sink-{uuid.uuid4().hex[:8]}.log")
        place = n.place_of(where)
        super().__init__(place, SINK_SRC, {"listen": list(listen), "log": self.log},
                         f"sink in {place.label}")

    def count(self, tag: str) -> int:
        """Lines of stream ``tag`` received so far."""
        return self.counts().get(tag, 0)

    def counts(self) -> dict:
        """tag -> lines received so far, of every stream (one read of the log)."""
        got: dict = {}
        if os.path.exists(self.log):
            with open(self.log) as f:
                for line in f:
                    tag = line.split()[1:2]
                    if tag:
                        got[tag[0]] = got.get(tag[0], 0) + 1
        return got

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(OSError):
            os.unlink(self.log)


class Stream(_Child):
    """Sends ``TAG N`` every 0.2 s from ``where`` to ``dst:port``, one flow."""

    def __init__(self, where, tag: str, proto: str, dst: str, port: int, sport: int = 0):
        place = n.place_of(where)
        cfg = {"tag": tag, "proto": proto, "dst": dst, "port": port, "sport": sport}
        super().__init__(place, STREAM_SRC, cfg, f"stream {tag} from {place.label}")
        self.tag = tag


class Flows:
    """The sinks and streams of one test; ``stop_all`` stops them (streams first)."""

    def __init__(self):
        self.children: list = []

    def sink(self, where, listen) -> Sink:
        s = Sink(where, listen)
        self.children.append(s)
        return s

    def stream(self, where, tag, proto, dst, port, sport=0) -> Stream:
        s = Stream(where, tag, proto, dst, port, sport)
        self.children.insert(0, s)
        return s

    def stop_all(self) -> None:
        for c in self.children:
            with contextlib.suppress(Exception):
                c.stop()
        self.children.clear()


def flowing(sink: Sink, tag: str, within: float = 5.0, lines: int = 3) -> int:
    """Wait until ``lines`` more lines of ``tag`` arrived at ``sink``; returns the count."""
    start = sink.count(tag)
    h.wait_until(lambda: sink.count(tag) >= start + lines, within, f"stream {tag} reaching the sink")
    return sink.count(tag)


def all_flowing(sink: Sink, tags, within: float = 5.0, lines: int = 3) -> None:
    """:func:`flowing` of every tag of ``tags``, watched side by side: each tag gets
    ``lines`` more lines within ``within`` seconds of the call (one wait, not one per tag)."""
    start = sink.counts()
    want = {tag: start.get(tag, 0) + lines for tag in tags}
    deadline = time.monotonic() + within
    while True:
        got = sink.counts()
        short = sorted(tag for tag, n in want.items() if got.get(tag, 0) < n)
        if not short:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for streams {short} "
                                 f"reaching the sink")
        time.sleep(0.1)


def stopped(sink: Sink, tag: str, settle: float = 0.4, watch: float = 2.0) -> bool:
    """True when no line of ``tag`` arrives during ``watch`` seconds (after ``settle``)."""
    return not still_going(sink, [tag], settle, watch)


def still_going(sink: Sink, tags, settle: float = 0.4, watch: float = 2.0) -> list:
    """The tags of ``tags`` of which a line arrived during ``watch`` seconds (after
    ``settle``): :func:`stopped` of every tag in one window instead of one window each."""
    time.sleep(settle)
    before = sink.counts()
    time.sleep(watch)
    after = sink.counts()
    return [tag for tag in tags if after.get(tag, 0) != before.get(tag, 0)]


def pick4() -> str:
    return f"10.233.{random.randint(0, 255)}.0/24"


def pick6() -> str:
    return f"fd00:233:{random.randint(0, 0xffff):x}::/64"


def host_in(subnet: str, index: int) -> str:
    """The ``index``-th address of ``subnet``."""
    import ipaddress
    return str(ipaddress.ip_network(subnet)[index])


def network(make_network, name: str, opts=None, ipv6: bool = True) -> h.Network:
    """A secnet network in this suite's subnets (retried on overlap)."""
    for _ in range(20):
        try:
            return make_network(name, ipv6=ipv6, subnet=pick4(), subnet6=pick6() if ipv6 else None,
                                opts=opts)
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise AssertionError("no free subnet in 10.233.0.0/16")
