"""Helpers of the upgrade tests (test_upgrade_kernel.py): an older build's datapath,
the daemon's start path over saved state, and probes sent all through an upgrade.

An older eBPF build is the datapath object compiled from the sources of an older
commit (``git archive``, then clang with the flags of plugin.enforce.ebpf.build),
loaded with the maps that build had (:data:`PRE_FRAGS_MAPS`). An older nftables
build is a table of today's whose shape an older FORMAT had (drift then names it).
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

import nsfixtures
from nsfixtures import NET_ID, InNamespace
from packets import ns_socket
from plugin.driver.state import NetworkRecord, State
from plugin.enforce.ebpf import build, libbpf, pins
from plugin.enforce.reconciler import Reconciler

REPO = Path(__file__).resolve().parents[2]
#: the last commit before the ``frags`` map (0b1d3b3, U12-F6): its build pins no ``frags``
PRE_FRAGS = "bc2ecd3e5fe3d46a0b5d3af4878e86cdf6ebbb78"
PRE_FRAGS_MAPS = tuple(m for m in pins.MAPS if m not in ("frags", "ct_new"))   # (ct_new: later still)
ALLOWED, DENIED = 7100, 7101
RULES = f"web->api:udp/{ALLOWED}, web->api:tcp/8080"


def older_object(rev: str, into: Path) -> str:
    """The datapath object of commit ``rev``, compiled into ``into``; skips the test
    when this checkout has no such commit (a copy without history)."""
    res = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}^{{commit}}"],
                         capture_output=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"commit {rev[:10]} (an older build's datapath) is not in this checkout")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "plugin/enforce/ebpf/bpf"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    source = into / "plugin/enforce/ebpf/bpf/secnet.c"
    obj = into / "older.o"
    argv = build.command(obj)
    argv[argv.index(str(build.SOURCE))] = str(source)
    subprocess.run(argv, check=True, capture_output=True)
    return str(obj)


def older_ebpf(pin_root: str, obj: str):
    """An older build's eBPF backend: its object, its maps (no ``frags``)."""
    from plugin.enforce.ebpf.backend import EbpfBackend   # noqa: PLC0415
    from plugin.enforce.nftables.natonly import NatTable   # noqa: PLC0415
    return EbpfBackend(pin_root=pin_root, obj_path=obj, nat=NatTable())


def write_with_older_build(lab, state, tmp_path, monkeypatch, rev: str, maps: tuple, missing: str) -> None:
    """Make ``lab``'s backend the build ``rev`` (its object, its ``maps``) and let its first
    pass write ``state``'s network: pinned without the map ``missing``, as that build did."""
    obj = older_object(rev, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(pins, "MAPS", maps)
        lab.backend.shutdown()
        lab.backend = InNamespace(lab.host, lambda: older_ebpf(lab.pin_root, obj))
        Reconciler(state, {"ebpf": lab.backend}).reconcile()
    assert missing not in os.listdir(os.path.join(lab.pin_root, NET_ID[:12]))


# --- saved state and the daemon's start path ---------------------------------------------
def saved_network(lab, path: str, web, api) -> tuple:
    """(State, NetworkRecord): the network (RULES, intra deny) and its two members, saved."""
    return nsfixtures.saved_network(lab, path, RULES, web, api)


def restart(lab, state, factory) -> tuple:
    """The daemon stops; a new one (backend ``factory(pin_root)``) starts: its first
    reconcile pass, as plugin.daemon.wiring.start runs it. Returns (Reconciler,
    (start, end) of the pass in time.monotonic())."""
    lab.backend.shutdown()
    lab.backend = InNamespace(lab.host, lambda: factory(lab.pin_root))
    rec = Reconciler(state, {lab.backend_name: lab.backend})
    start = time.monotonic()
    rec.reconcile()
    return rec, (start, time.monotonic())


# --- what the kernel holds --------------------------------------------------------------
def attached(lab, veths) -> set:
    """Ids of the programs on the ingress and egress hooks of ``veths``."""
    def read():
        return {libbpf.tc_query(socket.if_nametoindex(v), point)
                for v in veths for point in (libbpf.BPF_TC_INGRESS, libbpf.BPF_TC_EGRESS)}
    return lab.backend.call(read)


def pinned_programs(lab) -> set:
    """Ids of the programs pinned for the lab's network now."""
    ids = set()
    for name in pins.PROGS:
        fd = libbpf.obj_get(os.path.join(lab.pin_root, NET_ID[:12], name))
        try:
            ids.add(libbpf.prog_id(fd))
        finally:
            os.close(fd)
    return ids


def map_shape(lab, name: str) -> tuple:
    fd = libbpf.obj_get(os.path.join(lab.pin_root, NET_ID[:12], name))
    try:
        return libbpf.map_shape(fd)
    finally:
        os.close(fd)


# --- probes all through an upgrade ------------------------------------------------------
class Trickle:
    """UDP datagrams from ``src`` to ``dst`` (family ``fam``, ``port``), one every
    ``gap`` seconds from a thread, each stamped with its number and send time; the
    receiver's socket in ``dst`` records what arrives. ``stop()`` returns
    (send times, received numbers)."""

    def __init__(self, src, dst, fam: int, port: int, gap: float = 0.002):
        af = socket.AF_INET if fam == 4 else socket.AF_INET6
        self.rx = ns_socket(dst.ns, af, socket.SOCK_DGRAM)
        self.rx.bind((dst.ip(fam), port))
        self.rx.settimeout(0.05)
        self.tx = ns_socket(src.ns, af, socket.SOCK_DGRAM)
        self.to, self.gap = (dst.ip(fam), port), gap
        self.sent, self.got = [], set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        while not self._stop.is_set():
            self.tx.sendto(struct.pack("!I", len(self.sent)), self.to)
            self.sent.append(time.monotonic())
            time.sleep(self.gap)

    def _receive(self) -> None:
        while True:
            try:
                self.got.add(struct.unpack("!I", self.rx.recv(64)[:4])[0])
            except socket.timeout:
                if self._stop.is_set():
                    return

    def stop(self, linger: float = 0.3) -> tuple:
        time.sleep(linger)   # the last datagrams arrive
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.tx.close()
        self.rx.close()
        return self.sent, self.got


def sent_within(sent: list, window: tuple) -> int:
    """How many of the send times ``sent`` fall in ``window`` (start, end)."""
    return sum(window[0] <= t <= window[1] for t in sent)
