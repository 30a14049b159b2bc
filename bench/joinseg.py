"""Joins into a known segment and into a new one, interleaved (~1 min).

Run as root: ``.venv/bin/python -m bench.joinseg [--private [--backend ebpf]] [--endpoints M]
[--rules N] [--joins J] [--fresh] [--spy FILE]``. On the shared daemon (under the e2e lock, plugin on its
socket) it makes bench/scale.py's network ``snbench-scale`` with its two containers;
with ``--private``, this tree's daemon in a throwaway network namespace
(:class:`bench.memory.Private`: no Docker, no lock) and a network made through the
plugin API. Then M endpoints (default 200) through the plugin API over 100
segments, N rules (default 10,000, plus the flow's 2) in force, and J joins (default
30) of each kind in batches of five, alternating: five CreateEndpoint + Join into
known segments (``s5``..``s9``), their Leave + DeleteEndpoint, then five into
segments no rule names (``fresh<k>``, each its own), theirs. (A new segment's
identity is freed when its last member has left and the next new segment gets
it: joins one at a time would find the segment's entries in place.) Issue 12's
target: a join bringing a new segment <= 1.2x a join into a known one. ``--fresh``: before each
batch (of either kind) a rule is added and removed again (``/secnet/policy``, not timed), which
frees the idle identities: each new segment then gets an identity of its own and its entries
are written (as in ``make bench``'s joins at 10,000 rules, which follow a ``policy set``)
instead of taking over an idle one's. Prints the medians (ms) of CreateEndpoint, Join, both, and Leave + DeleteEndpoint per kind,
and the ratio of both, and the daemon worker's CPU time per join of each kind (all its
threads, /proc schedstat) and their ratio, as JSON. ``--spy FILE``: py-spy records the daemon's worker
during the timed joins (a flame graph; FILE ending in .txt: collapsed stacks; ``py-spy``
on PATH or in the venv).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from . import common, scale
from .common import Cleanup, Sizes, now, stats
from .daemon import daemon_pids
from .memory import GATEWAY, NET_ID, SUBNET, Private

BATCH = 5   # joins of a kind before they all leave (as bench/scale.py's joins at 10,000 rules)


def cpu_ns(pid: int) -> int:
    """On-CPU time (ns) of every thread of process ``pid`` now: the first field of each
    /proc/PID/task/TID/schedstat (ns, not the 10 ms ticks of /proc/PID/stat; a thread
    that exits between two readings takes its time with it). 0 without ``pid``."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task") if pid else ():
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


class Joins:
    """Endpoints of network ``nid`` through ``plugin`` (bench.common.Plugin); ``pid``: the
    daemon's worker, whose CPU time each batch's joins took is recorded."""

    def __init__(self, plugin, nid: str, pid: int = None):
        self.plugin, self.nid, self.pid = plugin, nid, pid
        self.ids: dict = {}   # i -> endpoint id (bench.scale.endpoint_id is random past its head)

    def join(self, i: int, seg: str) -> tuple:
        """CreateEndpoint + Join of endpoint ``i``: (create ms, join ms)."""
        eid = self.ids[i] = scale.endpoint_id(i)
        t0 = now()
        self.plugin.post("/NetworkDriver.CreateEndpoint", {
            "NetworkID": self.nid, "EndpointID": eid,
            "Interface": {"Address": f"{scale.FIRST_FAKE + (i - 1)}/20", "AddressIPv6": "", "MacAddress": ""},
            "Options": {"secnet.segment": seg}})
        t1 = now()
        self.plugin.post("/NetworkDriver.Join", {"NetworkID": self.nid, "EndpointID": eid,
                                                 "SandboxKey": "", "Options": {}})
        return (t1 - t0) * 1000, (now() - t1) * 1000

    def leave(self, i: int) -> float:
        t0 = now()
        body = {"NetworkID": self.nid, "EndpointID": self.ids.pop(i)}
        self.plugin.post("/NetworkDriver.Leave", body)
        self.plugin.post("/NetworkDriver.DeleteEndpoint", body)
        return (now() - t0) * 1000

    def batch(self, first: int, segments: list) -> list:
        """One endpoint per segment of ``segments`` joins, then all leave:
        [(create ms, join ms, leave ms, the worker's CPU ms per join of the batch)]."""
        cpu = cpu_ns(self.pid)
        joined = [self.join(first + k, seg) for k, seg in enumerate(segments)]
        cpu = (cpu_ns(self.pid) - cpu) / 1e6 / len(segments)
        left = [self.leave(first + k) for k in range(len(segments))]
        return [(c, j, ms, cpu) for (c, j), ms in zip(joined, left)]


def _spy(out: str, pid: int, rate: int = 997):
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        raise SystemExit("bench.joinseg --spy: no py-spy (pip install py-spy, or the 'bench' extra)")
    fmt = "raw" if out.endswith(".txt") else "flamegraph"   # raw: collapsed stacks, one a line
    return subprocess.Popen([spy, "record", "-p", str(pid), "-r", str(rate), "-o", out, "-f", fmt, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _free_idle(joins: Joins) -> None:
    """A rule added and removed: the policy edits free every idle segment's identity."""
    for action in ("add", "remove"):
        joins.plugin.post("/secnet/policy", {"network": joins.nid, "action": action,
                                             "rules": [scale.ONE_RULE], "list": False})


def _measure(joins: Joins, endpoints: int, count: int, spy_pid: int = None, spy: str = None,
             fresh: bool = False) -> dict:
    for i in range(1, endpoints + 1):
        joins.join(i, f"s{(i - 1) * scale.SEGMENTS // endpoints % scale.SEGMENTS}")
    joins.batch(endpoints + 1, ["s5", "warm0", "warm1"])   # warm-up, not counted
    recorder = _spy(spy, spy_pid) if spy else None
    times = {"known": [], "new": []}
    for b in range(0, count, BATCH):
        for kind in ("known", "new"):
            segs = [f"s{5 + k}" if kind == "known" else f"fresh{b + k}" for k in range(BATCH)]
            if fresh:   # before both kinds: whatever an edit leaves behind, both kinds meet it
                _free_idle(joins)
            times[kind] += joins.batch(endpoints + 1, segs)
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    for i in range(endpoints, 0, -1):
        joins.leave(i)
    return times


def _private(endpoints: int, rules: int, count: int, spy: str = None, backend: str = "nftables",
             fresh: bool = False) -> dict:
    d = Private()
    try:
        d.plugin.post("/NetworkDriver.CreateNetwork", {
            "NetworkID": NET_ID, "IPv4Data": [{"AddressSpace": "", "Pool": SUBNET, "Gateway": GATEWAY}],
            "IPv6Data": [], "Options": {"com.docker.network.generic": {
                "secnet.allow": ",".join(scale.sweep_rules(rules, 0) + scale.FLOW_RULES),
                "secnet.backend": backend}}})
        worker = d.pids()["worker"]
        times = _measure(Joins(d.plugin, NET_ID, worker), endpoints, count, worker, spy, fresh)
        d.plugin.post("/NetworkDriver.DeleteNetwork", {"NetworkID": NET_ID})
        return times
    finally:
        d.stop()


def _shared(endpoints: int, rules: int, count: int, spy: str = None, fresh: bool = False) -> dict:
    sizes = Sizes(quick=False, cp_runs=0, enforce_runs=0, iperf_secs=1, dp_repeats=1, sweep_repeats=1,
                  endpoints=endpoints, join_marks=(1,), rss_marks=(), rule_counts=(rules,),
                  update_repeats=1, idle_secs=0, scale_rules=rules)
    cleanup = Cleanup()
    sc = scale.Scale(sizes, cleanup)
    common.remove_leftovers()
    try:
        sc.setup()
        sc.policy_set(scale.sweep_rules(rules, 0) + scale.FLOW_RULES)
        worker = max(daemon_pids())
        return _measure(Joins(sc.plugin, sc.nid, worker), endpoints, count, worker, spy, fresh)
    finally:
        cleanup.run()
        sc.plugin.close()
        common.remove_leftovers()


def run(endpoints: int, rules: int, count: int, private: bool, spy: str = None, backend: str = None,
        fresh: bool = False) -> dict:
    times = _private(endpoints, rules, count, spy, backend or "nftables", fresh) if private else \
        _shared(endpoints, rules, count, spy, fresh)
    out = {"daemon": "private" if private else "shared", "backend": backend or "nftables", "endpoints": endpoints,
           "rules": rules + len(scale.FLOW_RULES), "fresh": fresh}
    for kind, rows in times.items():
        out[kind] = {name: round(stats(r[col] for r in rows)["median"], 2)
                     for col, name in ((0, "create_endpoint_ms"), (1, "join_ms"), (2, "leave_ms"))}
        out[kind]["both_ms"] = round(stats(r[0] + r[1] for r in rows)["median"], 2)
        out[kind]["worker_cpu_ms"] = round(sum(r[3] for r in rows) / len(rows), 3)   # mean per join
        out[kind]["n"] = len(rows)
    out["new_over_known"] = round(out["new"]["both_ms"] / out["known"]["both_ms"], 3)
    out["cpu_new_over_known"] = round(out["new"]["worker_cpu_ms"] / out["known"]["worker_cpu_ms"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--private", action="store_true", help="this tree's daemon in a netns of its own")
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--joins", type=int, default=30)
    parser.add_argument("--backend", choices=("nftables", "ebpf"), help="secnet.backend (--private only)")
    parser.add_argument("--fresh", action="store_true", help="free idle identities before each new batch")
    parser.add_argument("--spy", help="py-spy flame graph of the timed joins (an .svg path)")
    args = parser.parse_args()
    started = time.time()
    if args.backend and not args.private:
        parser.error("--backend needs --private (the shared run uses bench/scale.py's network)")
    found = run(args.endpoints, args.rules, args.joins, args.private, args.spy, args.backend, args.fresh)
    found["seconds"] = round(time.time() - started, 1)
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
