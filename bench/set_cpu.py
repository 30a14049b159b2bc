"""Where the daemon's ``policy set`` of N rules goes, stage by stage, in thread CPU and wall time.

Run as root: ``python -m bench.set_cpu [--rules N] [--endpoints M] [--sets S] [--fresh] [--flow]``. In a
throwaway network namespace, ``bench.handler``'s world (a real SQLite state, the
reconciler, the nftables backend, the conntrack flow index; M endpoints over 100
segments, N rules) takes S ``set``s of N rules, each replacing every rule (every port
moved: ``bench.scale.sweep_rules``; the flow's two rules kept, but with ``--every``),
through ``Api.policy`` as the route calls it (the cyclic collector paused as the daemon
pauses it). Each stage below is timed where it
is called (nested stages are included in their callers: ``policy delta`` holds
``recompile`` and ``apply_policy``, which holds ``elements``, ``encode`` and ``send``,
the kernel's part). Thread CPU time (``time.thread_time``) is the figure to compare on
a shared machine; wall time is printed next to it. Prints JSON: per stage the median
(ms) of the sets after the first two.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import tempfile
import time
import uuid

from plugin.driver.state import State
from plugin.kernel import netns

from . import handler
from .scale import FLOW_RULES, sweep_rules
from .stages import stages_but, wrap_stages

#: the daemon's policy path as ``Api.policy`` takes it (no request, no driver edit)
STAGES = stages_but("request", "driver edit")
_stamps: dict = {}


def _timed(fn, label: str):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            before = _stamps.get(label, (0.0, 0.0))
            _stamps[label] = (before[0] + (time.thread_time() - cpu) * 1000,
                              before[1] + (time.perf_counter() - wall) * 1000)
    return timed


def install() -> None:
    wrap_stages(STAGES, _timed)


def measure(rules: int, endpoints: int, sets: int, every: bool = False, fresh: bool = False,
            flow: bool = False) -> dict:
    """``sets`` + 2 sets of ``rules`` rules (the first two not counted); per stage the medians.
    ``every``: the sets leave out the flow's two rules (kept otherwise), so that from the
    first on each one replaces every rule (nftables: ``pol_port`` flushed). ``fresh``: each
    set's rules are texts this process has never parsed (``sweep_rules`` variants 1, 2, 3...;
    ``sets`` <= 7), not variants 1 and 2 in turn (the daemon skips parsing only the rules in
    force, so both kinds cost the same today; a cache of parsed rules would differ). ``flow``: one established flow
    between two members (``bench.handler.add_flow``; the flow's rules kept), which each set's
    flow pruning judges on the new map."""
    if fresh and sets + 2 > 9:
        raise ValueError("--fresh takes at most 7 sets (sweep_rules has 9 variants apart from the world's)")
    kept = ([] if every else FLOW_RULES) + (["s0->s1:tcp/1000"] if flow else [])   # (the flow's own rule)
    rows = []
    with tempfile.TemporaryDirectory(prefix="snbench-") as tmp:
        state = State(f"{tmp}/state")
        flows = handler._started_index()
        try:
            api = handler._world(state, rules, endpoints, flows)
            if flow:
                handler.add_flow()
            for rep in range(sets + 2):
                _stamps.clear()
                api.policy({"network": handler.NET_ID, "action": "set", "list": False,
                            "rules": sweep_rules(rules, 1 + (rep if fresh else rep % 2)) + kept})
                if rep >= 2:
                    rows.append(dict(_stamps))
            api.reconciler.network_removed(state.get_network(handler.NET_ID))
        finally:
            state.close()
            flows.stop()
    return {label: {"cpu_ms": round(statistics.median(r.get(label, (0, 0))[0] for r in rows), 1),
                    "wall_ms": round(statistics.median(r.get(label, (0, 0))[1] for r in rows), 1)}
            for _m, _p, label in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--every", action="store_true", help="each set replaces every rule (no rule kept)")
    parser.add_argument("--fresh", action="store_true", help="each set of rules never parsed before (sets <= 7)")
    parser.add_argument("--flow", action="store_true", help="one established flow the sets keep")
    args = parser.parse_args()
    install()
    name = f"snsetcpu-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        found = netns.run_in(f"/run/netns/{name}", measure, args.rules, args.endpoints, args.sets, args.every,
                             args.fresh, args.flow,
                             timeout=900)
        print(json.dumps({"rules": args.rules, "endpoints": args.endpoints, "sets": args.sets,
                          "stages": found}, indent=1))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
