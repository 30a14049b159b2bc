"""Cold RTT of eBPF builds side by side, interleaved (root; ~2 min for 20 rounds).

Pairs of namespaces on bridges (``bench.ebpf_datapath.bridge_pair``): a bare veth pair, the
redirect-only floor (``bpf/redirect_floor.c``), and one eBPF pair per ``--object`` (the eBPF
backend of this checkout running that compiled ``secnet.o``; the first is the base of the
ratios). Each round pings every pair (``ping -c --count -i 0.01``: every echo after 10 ms idle,
as bench.ebpf_datapath's RTT), every other round backwards, and keeps the median of the
per-echo RTTs (the mean of 50 lets one preempted echo of this shared VM move a round by a few
µs). The figures: per pair the median over rounds, and the median (min-max) of the per-round
ratios to the first ``--object``'s pair and to the bare veth.

Run: ``.venv/bin/python -m bench.ebpf_rtt_ab --object BASE.o --object NEW.o [--rounds 20]
[--count 100] [--json FILE]``. Subnets 10.218.{2,3,8,9}.0/24 and up, bench-only namespaces.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import uuid

from .ebpf_datapath import bridge_pair, enforce, floor, ns_del_all, save_json, sh, veth_pair


def pings(client: str, ip: str, count: int) -> float:
    """Median RTT in µs of ``count`` echoes 10 ms apart from namespace ``client`` to ``ip``."""
    out = sh("ip", "netns", "exec", client, "ping", "-c", str(count), "-i", "0.01", ip).stdout
    rtts = [float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", out)]
    if len(rtts) < count // 2:
        raise RuntimeError(f"ping {client} -> {ip}: {len(rtts)} of {count} answered")
    return statistics.median(rtts)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--object", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--json")
    args = ap.parse_args()
    tag, made = uuid.uuid4().hex[:4], []
    pin_root, work = f"/sys/fs/bpf/secnet-rtt-{tag}", tempfile.mkdtemp(prefix="snbench-rtt-")
    try:
        va, _vb, vip = veth_pair(tag, made)
        pairs = {"veth": (va, vip)}
        host, fa, _fb, fip = bridge_pair(tag + "f", 8, made)
        floor(host, 8, work)
        pairs["floor"] = (fa, fip)
        for i, obj in enumerate(args.object):
            octet = 2 if i == 0 else 9 + i
            host, a, _b, ip = bridge_pair(f"{tag}{i}", octet, made)
            enforce(host, octet, f"{pin_root}/{i}", obj=obj)
            pairs[f"{i}:{os.path.basename(obj)}"] = (a, ip)
        got = {name: [] for name in pairs}
        for r in range(args.rounds):
            for name in list(pairs)[::1 if r % 2 == 0 else -1]:
                got[name].append(pings(*pairs[name], args.count))
        base = got[f"0:{os.path.basename(args.object[0])}"]
        for name, rtts in got.items():
            to_base = sorted(a / b for a, b in zip(rtts, base))
            to_veth = statistics.median(a / b for a, b in zip(rtts, got["veth"]))
            print(f"{name:24s} {statistics.median(rtts):5.1f} µs  x{statistics.median(to_base):.3f} "
                  f"({to_base[0]:.2f}-{to_base[-1]:.2f}) of the first object  x{to_veth:.3f} of the bare veth")
        save_json(args.json, got)
    finally:
        ns_del_all(made)
        sh("rm", "-rf", pin_root, check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
