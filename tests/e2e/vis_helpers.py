"""Helpers of the visibility tests (`secnet log`, `explain`, `verify`, `metrics`).

Subnets come from 10.224.0.0/16 .. 10.225.0.0/16 and fd00:224::/48 only.
Packets go only to containers the test made. Sockets are made inside a
container's network namespace by plugin.kernel.netns (a thread enters it, makes the
socket and ends), so the test sends from its own thread with exact timing.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
from typing import Optional

from prometheus_client.parser import text_string_to_metric_families

import helpers as h
from plugin.cli import client as cli
from plugin.kernel import netns

SECNET = str(h.ROOT / ".venv" / "bin" / "secnet")


def pick4() -> str:
    return f"10.{random.randint(224, 225)}.{random.randint(0, 255)}.0/24"


def pick6() -> str:
    return f"fd00:224:{random.randint(0, 0xffff):x}::/64"


def vis_network(make_network, name: str, opts: Optional[dict] = None, ipv6: bool = True,
                driver: str = "secnet") -> h.Network:
    """A network (secnet unless ``driver`` says otherwise) in this suite's subnets."""
    last = None
    for _ in range(20):
        try:
            return make_network(name, ipv6=ipv6, subnet=pick4(), subnet6=pick6() if ipv6 else None,
                                opts=opts, driver=driver)
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
            last = exc
    raise AssertionError(f"no free subnet in 10.224-225.0.0/16: {last}")


def secnet(*args, timeout=120) -> subprocess.CompletedProcess:
    return h.run([SECNET, *args], check=False, timeout=timeout)


def secnet_json(*args, timeout=120):
    res = secnet(*args, "--json", timeout=timeout)
    assert res.returncode == 0, f"secnet {' '.join(args)}: {res.stderr.strip()}"
    return json.loads(res.stdout)


def log_since(net: h.Network, since: int = 0) -> dict:
    """The daemon's /secnet/log, straight over its socket (no CLI process: for timing)."""
    return cli.call("/secnet/log", {"network": net.id, "since": since}, timeout=10)


def log_cursor() -> int:
    return cli.call("/secnet/log", {"since": 1 << 62}, timeout=10)["cursor"]


def wait_entry(net: h.Network, since: int, match, within: float = 3.0, poll: float = 0.005):
    """(entry, seconds waited) of the first log entry after ``since`` that ``match`` accepts."""
    started = time.monotonic()
    while True:
        for entry in log_since(net, since)["entries"]:
            if match(entry):
                return entry, time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"no matching log entry within {within} s")
        time.sleep(poll)


def udp_socket(c: h.Container, family: int = 4) -> socket.socket:
    """A UDP socket inside ``c``'s network namespace, bound to its address."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    s = netns.run_in(c.sandbox, socket.socket, fam, socket.SOCK_DGRAM)
    s.bind((c.ip if family == 4 else c.ip6, 0))
    return s


def tcp_try(src: h.Container, dst: str, port: int, timeout: float = 0.5) -> bool:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with netns.run_in(src.sandbox, socket.socket, fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
            return True
        except ConnectionRefusedError:
            return True
        except OSError:
            return False


def metrics() -> dict:
    """(name, frozenset(labels)) -> value, from `secnet metrics` (text, parsed)."""
    res = secnet("metrics")
    assert res.returncode == 0, res.stderr
    out = {}
    for fam in text_string_to_metric_families(res.stdout):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(values: dict, name: str, **labels) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


def daemon_worker_pid() -> Optional[int]:
    """The gunicorn worker of the daemon started by scripts/plugin.sh."""
    pidfile = h.ROOT / ".run" / "plugin.pid"
    try:
        master = pidfile.read_text().strip()
    except OSError:
        return None
    res = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True)
    kids = res.stdout.split()
    return int(kids[0]) if kids else None


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def listeners(c: h.Container) -> list:
    """Listening TCP and bound UDP sockets in the container's namespace (not Docker's DNS)."""
    res = h.in_netns(c, "ss", "-ltnuH")
    return [line for line in res.stdout.splitlines() if line.strip() and "127.0.0.11:" not in line]


def state_dir() -> str:
    return os.environ.get("SECNET_STATE_DIR", "/var/lib/secnet")


def nid12(net: h.Network) -> str:
    return net.id[:12]


class StatusTimer:
    """Asks `secnet status` every 0.1 s in a thread while the block runs: (seconds, rc) each."""

    def __init__(self):
        self.times: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            res = secnet("status", timeout=10)
            self.times.append((time.monotonic() - started, res.returncode))
            time.sleep(0.1)

    def __enter__(self) -> "StatusTimer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    def slowest(self) -> float:
        return max((t for t, _rc in self.times), default=0.0)


def unmap_ipv4(net: h.Network, backend: str, addr: str) -> None:
    """Sabotage the datapath behind secnet's back: forget which identity the member
    address ``addr`` (IPv4) has, as a broken datapath would. nftables: its element of
    the inet table's address -> identity map ``id4``; eBPF: its entry in the pinned
    ``members`` map (key: family 4, three zero bytes, the address in 16 bytes)."""
    if backend == "nftables":
        h.run(["nft", "delete", "element", "inet", f"secnet_{nid12(net)}", "id4", f"{{ {addr} }}"])
        return
    key = bytes([4, 0, 0, 0]) + socket.inet_aton(addr) + bytes(12)
    h.run(["bpftool", "map", "delete", "pinned", f"/sys/fs/bpf/secnet/{nid12(net)}/members",
           "key", "hex", *(f"{b:02x}" for b in key)])
