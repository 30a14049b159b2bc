"""The daemon's memory without Docker or the shared daemon (~2 minutes).

Run as root: ``python -m bench.memory [--endpoints N] [--rules R] [--sets K]``.
It starts this tree's ``secnet-plugin`` (gunicorn master + worker, as users run
it) inside a throwaway network namespace, on a socket and state directory of
its own: nothing on the host, in Docker or in the shared daemon is touched, so
it needs no e2e lock. Docker is unreachable from there (``DOCKER_HOST`` names a
missing socket): endpoints carry their segment as a driver option, as
bench/scale.py's do. Through the plugin API and the CLI's ``/secnet/policy``
route it makes a network (bench/scale.py's 100-rule ring), N endpoints
(CreateEndpoint + Join) over 100 segments, K ``set``s of R rules (alternating
two sets that differ in every port, as bench/scale.py), one rule added and
removed, then Leave + DeleteEndpoint of every endpoint and DeleteNetwork. With
``--sweep 100,1000,10000,50000`` the ``set``s of R rules come after those of
each size of the sweep (5 ``set``s each, then 5 times one rule added and removed, as
``make bench``'s scale section, whose 50,000-rule edits set the daemon's high-water
mark); a sample after each; then, after the R-rule sets, 5 joins into a known and 5
into new segments and their leaves (as make bench's scale section) and a ``set`` back
to the network's 102 rules, a sample after each (what the sweep leaves once its rules
are gone). With ``--idle S`` the daemon is left alone S seconds after the endpoints
(320: past the reconciler's periodic drift check of every network, 300 s after start)
and sampled.

After each step (and 2 s of quiet: the worker gives free heap back 1 s after
its last request) it reads, for master and worker, VmRSS and Pss
(/proc/PID/smaps_rollup), median of 5 readings 0.2 s apart. ``rss_mib`` is the
VmRSS sum (what bench/daemon.py reports as the daemon's RSS; a page master and
worker share counts twice); ``pss_mib`` the Pss sum (a shared page split among
all processes on the host that map it, other helpers' Pythons included);
``union_rss_mib`` the resident pages of master and worker with each physical page
counted once (bench.daemon.union_rss_kib, /proc/PID/pagemap): the daemon's RSS
taken as one thing, what neither of the others measures. ``allocator``: the worker's
``PYTHONMALLOC`` (this tree's daemon runs on ``malloc``; an older tree's on pymalloc).
Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from .common import Plugin, stats
from .daemon import pss_kib, rss_kib, union_rss_kib
from .scale import FLOW_RULES, ONE_RULE, SEGMENTS, endpoint_id, ring_rules, sweep_rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET, GATEWAY = "10.216.0.0/20", "10.216.0.1/20"
NET_ID = "be3e0" + uuid.uuid4().hex + uuid.uuid4().hex[:27]


def _children(pid: int) -> list:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


class Private:
    """This tree's daemon in a network namespace of its own; :meth:`stop` removes it all."""

    def __init__(self):
        self.netns = f"snmem-{uuid.uuid4().hex[:6]}"  # not snbench*: a bench run of others removes those
        self.dir = tempfile.mkdtemp(prefix="snbench-mem-")
        self.socket = f"{self.dir}/secnet.sock"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        env = dict(os.environ, SECNET_SOCKET=self.socket, SECNET_STATE_DIR=f"{self.dir}/state",
                   DOCKER_HOST=f"unix://{self.dir}/no-docker.sock", SECNET_LOG_LEVEL="warning")
        self.log = open(f"{self.dir}/plugin.log", "w")
        # the entry point's main, not the ``secnet-plugin`` script: the e2e runs of others
        # stop every process named like that (pkill -f bin/secnet-plugin)
        # (its cwd is the scratch directory: ``plugin`` comes from PYTHONPATH or the venv)
        main = "import sys; from plugin.daemon.server import main; sys.exit(main())"
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, f"{ROOT}/.venv/bin/python", "-c", main],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.plugin = Plugin(self.socket, timeout=600)
        self.plugin.post("/Plugin.Activate", {}, patience=60)

    def pids(self) -> dict:
        workers = _children(self.proc.pid)
        return {"master": self.proc.pid, "worker": workers[0] if workers else None}

    def sample(self, quiet: float = 2.0) -> dict:
        time.sleep(quiet)
        pids = self.pids()
        rows = {k: [] for k in ("rss_mib", "pss_mib", "union_rss_mib", "master_rss_mib", "worker_rss_mib")}
        for _ in range(5):
            both = [p for p in pids.values() if p]
            rows["rss_mib"].append(rss_kib(both) / 1024)
            rows["pss_mib"].append(pss_kib(both) / 1024)
            union = union_rss_kib(both)
            rows["union_rss_mib"].append(union / 1024 if union is not None else None)
            for name in ("master", "worker"):
                rows[f"{name}_rss_mib"].append(rss_kib([pids[name]]) / 1024 if pids[name] else None)
            time.sleep(0.2)
        return {k: round(stats(v)["median"], 1) if None not in v else None for k, v in rows.items()}

    def allocator(self) -> str:
        """The worker's ``PYTHONMALLOC`` ("pymalloc" when unset): this tree's daemon sets
        ``malloc`` itself at start (plugin.daemon.server.with_system_malloc), an older tree's
        does not."""
        try:
            with open(f"/proc/{self.pids()['worker']}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except (OSError, TypeError):
            return "unknown"
        return env.get(b"PYTHONMALLOC", b"pymalloc").decode()

    def stop(self) -> None:
        self.plugin.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _policy(d: Private, action: str, rules: list) -> None:
    # as the CLI sends an edit: without the rule list in the answer
    d.plugin.post("/secnet/policy", {"network": NET_ID, "action": action, "rules": rules, "list": False})


def _join(d: Private, i: int, eid: str, segment: str) -> None:
    """CreateEndpoint + Join of endpoint number ``i`` (0-based: its address) in ``segment``."""
    d.plugin.post("/NetworkDriver.CreateEndpoint", {
        "NetworkID": NET_ID, "EndpointID": eid,
        "Interface": {"Address": f"10.216.{4 + i // 250}.{i % 250 + 1}/20", "AddressIPv6": "", "MacAddress": ""},
        "Options": {"secnet.segment": segment}})
    d.plugin.post("/NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": eid, "SandboxKey": "", "Options": {}})


def _leave(d: Private, eid: str) -> None:
    d.plugin.post("/NetworkDriver.Leave", {"NetworkID": NET_ID, "EndpointID": eid})
    d.plugin.post("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET_ID, "EndpointID": eid})


def _joins_at_rules(d: Private, endpoints: int) -> None:
    """As make bench's scale section after its sweep (bench/scale.py, joins_at_max_rules):
    5 joins into a known segment, then leaves; 5 into new segments (the policy map grows
    by an identity each), then leaves."""
    for kind in ("known", "new"):
        eids = [endpoint_id(endpoints + 1 + k) for k in range(5)]
        for k, eid in enumerate(eids):
            _join(d, endpoints + k, eid, "s5" if kind == "known" else f"fresh{k}")
        for eid in reversed(eids):
            _leave(d, eid)


def run(endpoints: int, rules: int, sets: int, sweep: tuple = (), idle: float = 0) -> dict:
    d = Private()
    out = {"endpoints": endpoints, "rules": rules, "sets": sets, "sweep": list(sweep), "idle": idle}
    eids = [endpoint_id(i) for i in range(1, endpoints + 1)]
    try:
        out["start"] = d.sample()
        out["allocator"] = d.allocator()
        d.plugin.post("/NetworkDriver.CreateNetwork", {
            "NetworkID": NET_ID, "IPv4Data": [{"AddressSpace": "", "Pool": SUBNET, "Gateway": GATEWAY}],
            "IPv6Data": [], "Options": {"com.docker.network.generic": {
                "secnet.allow": ",".join(ring_rules() + FLOW_RULES)}}})
        out["network"] = d.sample()
        for i, eid in enumerate(eids):
            _join(d, i, eid, f"s{i * SEGMENTS // endpoints % SEGMENTS}")
        out["endpoints_in"] = d.sample()
        if idle:   # past the reconciler's periodic drift check of every network (every 300 s)
            time.sleep(idle)
            out["idle"] = d.sample()
        for n in sweep:
            for rep in range(5):
                _policy(d, "set", sweep_rules(n, rep % 2) + FLOW_RULES)
            for _ in range(5):  # as make bench's sweep: one rule added and removed at each N
                _policy(d, "add", [ONE_RULE])
                _policy(d, "remove", [ONE_RULE])
            out[f"sweep_{n}"] = d.sample()
        for rep in range(sets):
            _policy(d, "set", sweep_rules(rules, rep % 2) + FLOW_RULES)
        out["rules_set"] = d.sample()
        _policy(d, "add", [ONE_RULE])
        _policy(d, "remove", [ONE_RULE])
        out["one_rule_edits"] = d.sample()
        if sweep:
            _joins_at_rules(d, endpoints)
            out["joins_at_rules"] = d.sample()
            # back to the network's own few rules: what the sweep's edits leave behind
            _policy(d, "set", ring_rules() + FLOW_RULES)
            out["few_rules"] = d.sample()
        for eid in eids:
            _leave(d, eid)
        out["endpoints_out"] = d.sample()
        d.plugin.post("/NetworkDriver.DeleteNetwork", {"NetworkID": NET_ID})
        out["network_out"] = d.sample()
    finally:
        d.stop()
    return out


STEPS = (("start", "start"), ("network", "network (100 rules)"), ("endpoints_in", "{endpoints:,} endpoints"),
         ("idle", "then {idle:.0f} s left alone"),
         ("rules_set", "{endpoints:,} endpoints + {rules:,} rules"), ("one_rule_edits", "one rule added, removed"),
         ("joins_at_rules", "5 joins into a known segment, 5 into new ones, and leaves"),
         ("few_rules", "back to 102 rules"),
         ("endpoints_out", "endpoints removed"), ("network_out", "network removed"))


def section(sizes) -> dict:
    """make bench's memory section: issue 12's own scenario (``sizes.endpoints`` endpoints,
    ``sizes.scale_rules`` rules, then all removed) on a private daemon, without the rule
    sweep (whose 50,000-rule edits set the shared daemon's figure in the scale section)."""
    out = run(sizes.endpoints, sizes.scale_rules, 7)
    out["method"] = __doc__.strip()
    return out


def table(r: dict) -> list:
    """Markdown rows of one :func:`run`'s steps (RSS sum, Pss sum, master and worker RSS)."""
    rows = [f"Allocator of the daemon's Python objects: {r.get('allocator', 'unknown')}.", "","| step | RSS sum, MiB | Pss sum, MiB | RSS, shared pages once, MiB | master / worker RSS, MiB |",
            "|---|---|---|---|---|"]
    for key, label in STEPS:
        s = r.get(key)
        if s:
            rows.append(f"| {label.format(**r)} | {s['rss_mib']} | {s['pss_mib']} | {s.get('union_rss_mib')} | "
                        f"{s['master_rss_mib']} / {s['worker_rss_mib']} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--sets", type=int, default=7)
    parser.add_argument("--sweep", default="", help="rule counts set 5 times each before the R-rule sets, "
                                                    "e.g. 100,1000,10000,50000 (make bench's sweep)")
    parser.add_argument("--idle", type=float, default=0, help="seconds left alone after the endpoints "
                                                                 "(320: past the reconciler's periodic pass)")
    args = parser.parse_args()
    sweep = tuple(int(n) for n in args.sweep.split(",") if n)
    print(json.dumps(run(args.endpoints, args.rules, args.sets, sweep, args.idle), indent=1))


if __name__ == "__main__":
    main()
