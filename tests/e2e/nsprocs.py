"""Background programs in containers' network namespaces for the e2e tests:
servers that answer and record what reached them, and sniffers (host programs run
through nsenter, so the image needs no tools). They are children of the test
process, exit when their stdin closes, and the ``nsprocs`` fixture kills them
before the containers go."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional

import pytest

import helpers as h

PY = sys.executable

SERVER_SRC = r'''
import json, os, selectors, socket, sys, time
cfg = json.loads(sys.argv[1])
log = open(cfg["log"], "a", buffering=1) if cfg.get("log") else None
sel = selectors.DefaultSelector()
for proto, ports in (("tcp", cfg.get("tcp", [])), ("udp", cfg.get("udp", []))):
    for port in ports:
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((addr, port))
            except OSError as e:
                if family == socket.AF_INET6 and not cfg.get("need6"):
                    s.close()
                    continue
                raise
            if proto == "tcp":
                s.listen(128)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, (proto, port))
sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", 0))
print("READY", flush=True)
while True:
    for key, _ in sel.select():
        proto, port = key.data
        if proto == "stdin":
            if not os.read(0, 1024):
                sys.exit(0)
            continue
        try:
            if proto == "tcp":
                conn, addr = key.fileobj.accept()
                conn.setblocking(True)
                conn.settimeout(0.5)
                try:
                    conn.sendall(b"secnet-ok\n")
                except OSError:
                    pass
                conn.close()
            else:
                data, addr = key.fileobj.recvfrom(4096)
                key.fileobj.sendto(b"secnet-ok", addr)
        except OSError:
            continue
        if log:
            log.write(f"{time.monotonic():.6f} {proto} {port} {addr[0]}\n")
'''

SNIFF_SRC = r'''
import os, select, socket, struct, sys, time
ifname, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((ifname, 0))
out = open(path, "a", buffering=1)
print("READY", flush=True)
def mac(b):
    return ":".join("%02x" % x for x in b)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in r and not os.read(0, 1024):
        sys.exit(0)
    if s not in r:
        continue
    data, addr = s.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    et = struct.unpack("!H", data[12:14])[0]
    l3 = data[14:]
    src = dst = "-"
    if et == 0x0800 and len(l3) >= 20:
        src, dst = socket.inet_ntop(socket.AF_INET, l3[12:16]), socket.inet_ntop(socket.AF_INET, l3[16:20])
    elif et == 0x86dd and len(l3) >= 40:
        src, dst = socket.inet_ntop(socket.AF_INET6, l3[8:24]), socket.inet_ntop(socket.AF_INET6, l3[24:40])
    elif et == 0x0806 and len(l3) >= 28:
        src, dst = socket.inet_ntop(socket.AF_INET, l3[14:18]), socket.inet_ntop(socket.AF_INET, l3[24:28])
    out.write(f"{time.monotonic():.6f} {mac(data[6:12])} {et:04x} {src} {dst}\n")
'''


class NsProc:
    """A host program running inside a container's network namespace."""

    def __init__(self, container: h.Container, args: list, name: str):
        self.container = container
        self.name = name
        self.proc = subprocess.Popen(["nsenter", f"--net={container.sandbox}", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # READY, or EOF when it failed
        if line.strip() != "READY":
            self.stop()
            raise AssertionError(f"{name} in {container.name} did not start: "
                                 f"{self.proc.stderr.read().strip()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its pid
        try:
            self.proc.wait(timeout=5)
        finally:
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except Exception:
                    pass


class NsProcs:
    """Servers and sniffers of one test; ``stop_all`` kills every one of them."""

    def __init__(self):
        self.procs: list = []
        self.dir = tempfile.mkdtemp(prefix="secnet-seg-")
        self.lock = threading.Lock()
        self._n = itertools.count()

    def _add(self, p: NsProc) -> NsProc:
        with self.lock:
            self.procs.append(p)
        return p

    def server(self, c: h.Container, tcp=(), udp=(), log: bool = False) -> "Server":
        path = os.path.join(self.dir, f"server-{c.name}-{next(self._n)}.log") if log else None
        cfg = {"tcp": list(tcp), "udp": list(udp), "log": path, "need6": bool(c.ip6)}
        p = self._add(NsProc(c, [PY, "-c", SERVER_SRC, json.dumps(cfg)], "server"))
        return Server(p, path)

    def sniffer(self, c: h.Container, ifname: str = "eth0") -> "Sniffer":
        path = os.path.join(self.dir, f"sniff-{c.name}-{next(self._n)}.log")
        p = self._add(NsProc(c, [PY, "-c", SNIFF_SRC, ifname, path], "sniffer"))
        return Sniffer(p, path)

    def servers(self, containers: Iterable[h.Container], tcp=(), udp=()) -> list:
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(lambda c: self.server(c, tcp=tcp, udp=udp), containers))

    def stop_all(self) -> None:
        errors = []
        for p in self.procs:
            try:
                p.stop()
            except Exception as exc:
                errors.append(f"{p.name} in {p.container.name}: {exc}")
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("could not stop: " + "; ".join(errors))


class Server:
    def __init__(self, proc: NsProc, log: Optional[str]):
        self.proc, self.log = proc, log

    def sources(self) -> list:
        """(proto, port, source address) of every connection/datagram served."""
        if not self.log or not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [tuple(line.split()[1:4]) for line in f if line.strip()]


class Sniffer:
    def __init__(self, proc: NsProc, path: str):
        self.proc, self.path = proc, path

    def frames(self) -> list:
        """(time, src mac, ethertype hex, l3 src, l3 dst) of every frame received."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [tuple(line.split()) for line in f if line.strip()]


@pytest.fixture
def nsprocs(run_container):
    """Background programs in containers' netns; killed before the containers go."""
    procs = NsProcs()
    yield procs
    procs.stop_all()
