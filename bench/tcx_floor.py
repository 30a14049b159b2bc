"""The floor on tcx against the floor on clsact: cold ping RTT, interleaved (root; ~2 min).

``bpf/redirect_floor.c`` (a program that only redirects) on both host-side veths of a bridge
pair, attached two ways: with tc on a clsact qdisc (``ebpf_datapath.floor``, how secnet attaches
its programs: libbpf's ``bpf_tc_*``) and as a tcx link (kernel >= 6.6: ``BPF_LINK_CREATE`` with
``BPF_TCX_INGRESS``, no qdisc and no tcf classify layer; libbpf 1.1's generic
``bpf_link_create``, the link pinned so that it outlives this process until the namespaces
go). Beside them a bare veth pair. Each round pings every pair (100 echoes 10 ms apart, the
median: ``ebpf_rtt_ab.pings``), every other round backwards; the figures: the medians of the
per-round ratios. Also printed: the frames the host-side veths transmitted (a frame the
program did not redirect crosses the bridge), so a detached program cannot pass unseen.

Run: ``.venv/bin/python -m bench.tcx_floor [ROUNDS]``. Subnets 10.218.{8,9,11}.0/24.
"""
from __future__ import annotations

import ctypes
import json
import os
import statistics
import sys
import tempfile
import uuid

from .ebpf_datapath import bridge_pair, floor, link_packets, ns_del_all, sh, veth_pair
from .ebpf_rtt_ab import pings

BPF_TCX_INGRESS = 46          # include/uapi/linux/bpf.h, enum bpf_attach_type (6.6+)
CLONE_NEWNET = 0x40000000


def _in_netns(host: str, fn):
    """``fn()`` with this thread in namespace ``host`` (a tcx link's ifindex is the caller's netns')."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    target, home = os.open(f"/run/netns/{host}", os.O_RDONLY), os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns {host}")
        return fn()
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(target)
        os.close(home)


def tcx_floor(host: str, work: str, pins: str) -> None:
    """The floor on ``sva`` and ``svb`` of namespace ``host`` as tcx ingress links, pinned under ``pins``."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    idx = {d: json.loads(sh("ip", "-n", host, "-j", "link", "show", d).stdout)[0]["ifindex"] for d in ("sva", "svb")}
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "redirect_floor.c")
    os.makedirs(pins, exist_ok=True)
    for dev, peer in (("sva", "svb"), ("svb", "sva")):
        obj, prog = os.path.join(work, f"tcx-{dev}.o"), f"{pins}/p{dev}"
        sh("clang", "-O2", "-g", "-target", "bpf", f"-DPEER={idx[peer]}", "-I/usr/include/x86_64-linux-gnu",
           "-c", src, "-o", obj)
        sh("bpftool", "prog", "load", obj, prog, "type", "classifier")
        fd = lib.bpf_obj_get(prog.encode())
        link = _in_netns(host, lambda: lib.bpf_link_create(fd, idx[dev], BPF_TCX_INGRESS, None))
        if fd < 0 or link < 0 or lib.bpf_obj_pin(link, f"{pins}/l{dev}".encode()):
            raise RuntimeError(f"tcx link on {host}/{dev}: prog fd {fd}, link {link}")


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    tag, made = uuid.uuid4().hex[:4], []
    work, pins = tempfile.mkdtemp(prefix="snbench-tcx-"), f"/sys/fs/bpf/secnet-tcx-{tag}"
    try:
        va, _vb, vip = veth_pair(tag, made)
        h1, fa, _fb, fip = bridge_pair(tag + "f", 8, made)
        floor(h1, 8, work)
        h2, ta, _tb, tip = bridge_pair(tag + "t", 11, made)
        tcx_floor(h2, work, pins)
        pairs = {"veth": (va, vip), "floor-clsact": (fa, fip), "floor-tcx": (ta, tip)}
        got = {k: [] for k in pairs}
        for r in range(rounds):
            for k in list(pairs)[::1 if r % 2 == 0 else -1]:
                got[k].append(pings(*pairs[k], 100))
        for k, v in got.items():
            x = sorted(a / b for a, b in zip(v, got["veth"]))
            y = sorted(a / b for a, b in zip(v, got["floor-clsact"]))
            print(f"{k:13s} {statistics.median(v):5.1f} µs  x{statistics.median(x):.3f} ({x[0]:.2f}-{x[-1]:.2f}) "
                  f"of veth  x{statistics.median(y):.3f} ({y[0]:.2f}-{y[-1]:.2f}) of floor-clsact")
        print("host-side (rx, tx) packets: tcx", link_packets(h2, "sva"), link_packets(h2, "svb"),
              "clsact", link_packets(h1, "sva"), link_packets(h1, "svb"))
    finally:
        ns_del_all(made)
        sh("rm", "-rf", pins, work, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
