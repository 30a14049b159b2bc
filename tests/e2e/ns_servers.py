"""Echo servers of the north-south tests, on the host, in a namespace of our own or
in a container (a host program run with PY, through nsenter for a namespace): each
answers REPLY plus its name and records who reached it."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import uuid

import pytest

import helpers as h
from ns_helpers import PY, place_of

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
