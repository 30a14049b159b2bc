"""The eBPF datapath of two trees side by side: ns per program run, interleaved (root; ~3 min).

Two pairs of namespaces on Linux bridges (``bench.ebpf_datapath.bridge_pair``: br_netfilter on,
an allowing policy ``a->b:tcp/5201, b->a:tcp/5201, a->b:tcp/5202, a->b:icmp``, intra deny),
one with this checkout's eBPF backend and programs, one with another tree's (``--base DIR``: its
own Python backend and its own compiled ``secnet.o``, run with this venv's interpreter from
DIR, as ``bench.nft_guard --base`` does). With ``kernel.bpf_stats_enabled=1`` (restored after),
each round runs, on each pair (every other round the base first): iperf3 for ``--secs`` (an
established TCP flow, warm caches) and sockperf's request/response (hot, 64-byte packets, one
CPU), and reads ``run_time_ns`` and ``run_cnt`` of ``from_container`` and ``to_container``
(``bpftool prog show``; the kernel adds the time of each run when the sysctl is on,
kernel/bpf/syscall.c ``bpf_prog_get_stats``) before and after: the mean ns per run of each
program in that run, and Gbit/s. The figure: per program and load, the median of the per-round
ratios new / base, with min and max (a ratio within a round is free of the machine's drift).

Run: ``.venv/bin/python -m bench.ebpf_ab --base DIR [--rounds 10] [--secs 3] [--json FILE]``.
Subnets 10.218.{2,5}.0/24, only in the bench's own namespaces (deleted at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import uuid

from .apply_script import apply_script
from .ebpf_datapath import NET_ID, bridge_pair, iperf_run, ns_del_all, prog_stats, rr, save_json, sh

RULES = "a->b:tcp/5201, b->a:tcp/5201, a->b:tcp/5202, a->b:icmp"
LOADS = ("iperf3", "sockperf")


def enforce(tree: str, host: str, octet: int, pin_root: str) -> None:
    """The eBPF backend of ``tree`` (its Python and its compiled programs) on ``host``'s br0."""
    pair = (f"[Port('ea', 'sva', '02:42:0a:da:{octet:02x}:02', '10.218.{octet}.2', identity=256), "
            f"Port('eb', 'svb', '02:42:0a:da:{octet:02x}:03', '10.218.{octet}.3', identity=257)]")
    code = apply_script(host, RULES, pair, f"NetworkSpec({NET_ID!r}, 'br0', ('10.218.{octet}.0/24',))",
                        backend=f"EbpfBackend(pin_root={pin_root!r})",
                        imports="from plugin.enforce.ebpf.backend import EbpfBackend", close=True)
    sh(sys.executable, "-c", code, cwd=tree)


def prog_tags(pin_root: str) -> dict:
    """program name -> its tag (a hash of its instructions: tells the two trees' programs apart)."""
    return {name: json.loads(sh("bpftool", "-j", "prog", "show", "pinned",
                                f"{pin_root}/{NET_ID[:12]}/{name}").stdout).get("tag")
            for name in ("from_container", "to_container")}


def one_run(pair: tuple, pin_root: str, load: str, secs: int) -> dict:
    """ns per run of each program (and runs, Gbit/s for iperf3) over one ``load`` run on ``pair``."""
    before = prog_stats(pin_root)
    gbps = iperf_run(*pair, secs)[0] if load == "iperf3" else None
    if load == "sockperf":
        rr(*pair, secs)
    after = prog_stats(pin_root)
    out = {"gbps": gbps}
    for name, (t, n) in after.items():
        runs = n - before[name][1]
        out[f"{name}_ns"] = (t - before[name][0]) / runs if runs else None
        out[f"{name}_runs"] = runs
    return out


def measure(pairs: dict, rounds: int, secs: int) -> dict:
    """``{name: {load: [one_run(...) per round]}}``, every other round backwards."""
    got = {name: {load: [] for load in LOADS} for name in pairs}
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        was = f.read().strip()
    sh("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
    try:
        for i in range(rounds):
            for name in list(pairs)[::1 if i % 2 == 0 else -1]:
                pair, root = pairs[name]
                for load in LOADS:
                    got[name][load].append(one_run(pair, root, load, secs))
            print(f"round {i + 1}/{rounds}: " + ", ".join(
                f"{n} from {v['iperf3'][-1]['from_container_ns']:.0f} ns "
                f"({v['sockperf'][-1]['from_container_ns']:.0f} rr)" for n, v in got.items()), flush=True)
    finally:
        sh("sysctl", "-qw", f"kernel.bpf_stats_enabled={was}")
    return got


def summary(got: dict, new: str = "new", base: str = "base") -> dict:
    """Per load and figure: medians of each tree and the median (min, max) of per-round ratios."""
    med = statistics.median
    out = {}
    for load in LOADS:
        for key in ("from_container_ns", "to_container_ns", "gbps", "from_container_runs", "to_container_runs"):
            a = [r[key] for r in got[new][load]]
            b = [r[key] for r in got[base][load]]
            if not all(x is not None for x in a + b):
                continue
            ratios = [x / y for x, y in zip(a, b) if y]
            out[f"{load} {key}"] = {new: round(med(a), 2), base: round(med(b), 2),
                                    "ratio_median": round(med(ratios), 3) if ratios else None,
                                    "ratio_min": round(min(ratios), 3) if ratios else None,
                                    "ratio_max": round(max(ratios), 3) if ratios else None}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the other tree (its secnet.o built)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tag, made = uuid.uuid4().hex[:4], []
    roots = {"new": f"/sys/fs/bpf/secnet-bench-{tag}n", "base": f"/sys/fs/bpf/secnet-bench-{tag}b"}
    try:
        pairs = {}
        for name, tree, octet in (("new", here, 2), ("base", os.path.abspath(args.base), 5)):
            host, a, b, ip = bridge_pair(tag + name[0], octet, made)
            enforce(tree, host, octet, roots[name])
            pairs[name] = ((a, b, ip), roots[name])
        tags = {name: prog_tags(root) for name, root in roots.items()}
        print(f"programs: {tags}")
        got = measure(pairs, args.rounds, args.secs)
        res = summary(got)
        for key, row in res.items():
            print(f"{key:32s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
        save_json(args.json, {"programs": tags, "runs": got, "summary": res})
    finally:
        ns_del_all(made)
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
