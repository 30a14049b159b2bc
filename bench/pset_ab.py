"""``policy set`` of N rules in two trees, interleaved, in CPU time (root; no Docker, no daemon).

Each round runs, for each tree (every other round the base first), one process in a network
namespace of its own, with that tree's code (this venv's interpreter, the tree as its working
directory, as ``bench.nft_guard --base`` does):

* ``backend`` (default): the nftables backend alone, as ``bench.nft_datapath`` drives it (a
  network of 100 segments and 200 ports, ``nft_datapath.sweep_rules``): ``apply_policy`` of a set
  from 0 to N rules, then ``--sets`` sets of N rules replacing N others (variants 1 and 0 in
  turn: every port moved); the map after the delta passed, as the reconciler passes it;
* ``handler``: ``python -m bench.set_cpu --sets S --rules N`` of that tree (the daemon's
  ``Api.policy`` over a real state, reconciler, backend and flow index; its stage medians).

Figures: the calling thread's CPU time (``time.thread_time``: user and system, the kernel's
netlink transaction included, as it runs in the sender's ``sendmsg``) and wall time, in ms; per
figure the medians of each tree and the median (min, max) of the per-round ratios new / base.
The cyclic collector is paused around each timed call (as the daemon pauses it in the route).

Run: ``.venv/bin/python -m bench.pset_ab --base DIR [--what backend|handler] [--rules 10000]
[--sets 3] [--rounds 12] [--fresh] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import uuid

from .ebpf_datapath import save_json

_BACKEND = """
import gc, json, time
from bench import nft_datapath as nd
from plugin.enforce.backend import Port
from plugin.enforce.nftables import NftBackend
from segmentation.identities import MemoryAllocator
n, sets = {rules}, {sets}
ids = MemoryAllocator().allocate(nd.NET.id, [f's{{i}}' for i in range(nd.SEGMENTS)] + ['default'])
ports = [Port(f'e{{i}}', f'snb{{i}}', f'02:42:0a:ee:{{i // 256:02x}}:{{i % 256:02x}}',
              f'10.238.{{i // 256}}.{{i % 256 + 2}}', None, ids[f's{{i % nd.SEGMENTS}}'], f's{{i % nd.SEGMENTS}}')
         for i in range(200)]
backend = NftBackend()
maps = [nd.policy('', ids)] + [nd.policy(nd.sweep_rules(n, v), ids) for v in (0, 1)]
backend.apply_network(nd.NET, maps[0], ports)
out = {{}}
def timed(label, old, new):
    delta = old.delta(new)
    gc.collect(); gc.disable()
    cpu, wall = time.thread_time(), time.perf_counter()
    backend.apply_policy(nd.NET, delta, policy=new)
    out.setdefault(label, []).append(((time.thread_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000))
    gc.enable()
timed('set 0 to N', maps[0], maps[1])
cur = 1
for _ in range(sets):
    timed('set N to N other', maps[cur], maps[3 - cur])
    cur = 3 - cur
backend.remove_network(nd.NET.id)
print(json.dumps(out))
"""


def run_backend(tree: str, rules: int, sets: int) -> dict:
    """``{label: (cpu ms, wall ms)}`` of one process of ``tree`` (N to N other: the median)."""
    name = f"snpsab-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        res = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c",
                              _BACKEND.format(rules=int(rules), sets=int(sets))],
                             cwd=tree, capture_output=True, text=True, timeout=900)
        if res.returncode:
            raise RuntimeError(f"{tree}: {res.stderr.strip()[-500:]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    return {label: tuple(statistics.median(v[i] for v in runs) for i in (0, 1)) for label, runs in got.items()}


def run_handler(tree: str, rules: int, sets: int, fresh: bool = False) -> dict:
    """``{stage: (cpu ms, wall ms)}``: the stage medians of ``tree``'s ``bench.set_cpu``
    (``fresh``: its ``--fresh``, which both trees' ``bench.set_cpu`` must know)."""
    res = subprocess.run([sys.executable, "-m", "bench.set_cpu", "--rules", str(rules), "--sets", str(sets)]
                         + (["--fresh"] if fresh else []),
                         cwd=tree, capture_output=True, text=True, timeout=1800)
    if res.returncode:
        raise RuntimeError(f"{tree}: {res.stderr.strip()[-500:]}")
    stages = json.loads(res.stdout)["stages"]
    return {label: (v["cpu_ms"], v["wall_ms"]) for label, v in stages.items()}


def summary(rows: dict) -> dict:
    """Per label: each tree's medians and the median (min, max) of the per-round ratios."""
    med = statistics.median
    out = {}
    for label in rows["new"][0]:
        for i, kind in enumerate(("cpu_ms", "wall_ms")):
            a = [r[label][i] for r in rows["new"]]
            b = [r[label][i] for r in rows["base"]]
            ratios = [x / y for x, y in zip(a, b) if y]
            if ratios:
                out[f"{label} {kind}"] = {"new": round(med(a), 1), "base": round(med(b), 1),
                                          "ratio_median": round(med(ratios), 3),
                                          "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--what", choices=("backend", "handler"), default="backend")
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--fresh", action="store_true", help="handler: every set of rules never parsed before")
    ap.add_argument("--json")
    args = ap.parse_args()
    trees = {"new": os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "base": os.path.abspath(args.base)}
    run = run_backend if args.what == "backend" else functools.partial(run_handler, fresh=args.fresh)
    rows: dict = {"new": [], "base": []}
    for i in range(args.rounds):
        for name in (("new", "base") if i % 2 == 0 else ("base", "new")):
            rows[name].append(run(trees[name], args.rules, args.sets))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(
            f"{n} " + " ".join(f"{k} {v[0]:.1f}" for k, v in r[-1].items() if k in (
                "set 0 to N", "set N to N other", "Api.policy")) for n, r in rows.items()), flush=True)
    res = summary(rows)
    for label, row in res.items():
        print(f"{label:28s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    save_json(args.json, {"what": args.what, "rules": args.rules, "sets": args.sets, "rounds": rows, "summary": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
