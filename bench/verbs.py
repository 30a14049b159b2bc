"""The daemon's own time per remote-driver verb of `docker network create` and `docker run`,
two trees side by side, interleaved (issue 12's "the verbs themselves").

Run as root: ``python -m bench.verbs [--base DIR] [--rounds N] [--runs M] [--pairs P] [--gap MS]
[--others K]``.
It starts two private daemons (``secnet-plugin``'s ``main``, gunicorn master + worker, each in a
throwaway network namespace with its own socket and state directory: nothing on the host,
in Docker or in the shared daemon is touched, so it needs no e2e lock): one of this tree,
one of ``--base`` (a ``git archive`` export of another commit; without it both are this
tree, an A/A). Each daemon gets a stand-in engine (:class:`FakeEngine`: a unix socket
answering ``/version``, ``/info``, ``GET /networks/{id}`` with the joining endpoint listed as
``ep-<id>`` and ``GET /containers/json`` with the container's labels, as dockerd 20.10
answers during a Join; an event stream that stays open and says nothing), so Join makes the same two engine
reads it makes under Docker. Each round, for each daemon (the order alternates by
round): CreateNetwork, then M times what ``docker run`` sends (CreateEndpoint, Join,
ProgramExternalConnectivity, EndpointOperInfo) and what ``docker rm -f`` sends
(RevokeExternalConnectivity, Leave, DeleteEndpoint), then DeleteNetwork. ``--others K``: each
daemon first makes K networks of its own and keeps them (the host's other networks).

Per request: wall time at the client (the unix-socket round trip included, as dockerd
sees it) and the worker's CPU time: the sum over its threads of
``/proc/PID/task/TID/schedstat``'s first field (ns on a CPU), before and after (threads
that end inside the request -- CreateNetwork's forward-rules thread -- and child processes
are not in it; ``cpu_all`` adds ``/proc/PID/stat``'s utime+stime+cutime+cstime over the
whole run, in clock ticks, as a check). Prints per tree and verb the median wall and CPU
ms, and the median over rounds of the per-round ratio this/base of each verb's median.

The rounds are split over P pairs of daemons started one pair after the other (``--pairs``,
default 4; base's daemon starts first in every other pair). Each process has a speed of its
own (its memory layout, its hash seed): with one pair, six A/A runs (one tree against a copy
of itself, 10 rounds x 10) gave Join 0.87-1.13x wall and 0.89-1.10x CPU, EndpointOperInfo
0.89-1.18x CPU, all verbs of a run leaning the same way (bench/results/2026-12-01-joinfix.md):
one pair's ratio is that pair's, not the trees'. Several pairs average it out (pyperf runs
many processes for the same reason).
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid

from .common import CLK_TCK, Plugin, now, stats
from .memory import _children

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_VERBS = ("CreateEndpoint", "Join", "ProgramExternalConnectivity", "EndpointOperInfo")
RM_VERBS = ("RevokeExternalConnectivity", "Leave", "DeleteEndpoint")


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """What dockerd answers a driver's Join lookup, on a unix socket at ``path``.

    ``members[network_id] = {endpoint_id: (name, labels)}``: the endpoints a network lists
    (as ``ep-<id>``, the joining container's entry) and ``/containers/json`` returns."""

    daemon_threads = True

    def __init__(self, path: str):
        self.members: dict = {}
        self.stopped = threading.Event()
        super().__init__(path, _EngineHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def answer(self, path: str):
        url = urllib.parse.urlparse(path)
        parts = url.path.strip("/").split("/")
        if parts and parts[0].startswith("v1."):
            parts = parts[1:]
        if parts == ["version"] or parts == ["_ping"]:
            return {"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12"}
        if parts == ["info"]:
            return {"ServerVersion": "20.10.24"}
        if parts == ["networks"]:
            return [{"Id": nid} for nid in self.members]
        if len(parts) == 2 and parts[0] == "networks":
            eps = self.members.get(parts[1], {})
            return {"Id": parts[1], "Containers": {f"ep-{eid}": {"Name": name, "EndpointID": eid}
                                                   for eid, (name, _labels) in eps.items()}}
        if parts == ["containers", "json"]:
            query = urllib.parse.parse_qs(url.query)
            wanted = json.loads(query.get("filters", ["{}"])[0]).get("name", [""])[0]
            return [{"Id": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex * 2, "Names": [f"/{name}"],
                     "Labels": labels, "State": "created"}
                    for eps in self.members.values() for name, labels in eps.values()
                    if re.search(wanted, f"/{name}")]   # a regexp, as dockerd matches it
        return None


class _EngineHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self):   # a unix socket has no peer address
        return "engine"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.split("?")[0].endswith("/events"):   # an open stream that says nothing
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self.server.stopped.wait()
            return
        body = self.server.answer(self.path)
        data = json.dumps(body if body is not None else {"message": "not here"}).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Daemon:
    """The daemon of ``tree`` (its ``plugin`` and ``segmentation`` first on PYTHONPATH) in a
    namespace of its own, with a :class:`FakeEngine`; :meth:`stop` removes it all."""

    def __init__(self, tree: str, label: str):
        self.label, self.tree = label, tree
        self.netns = f"snverbs-{uuid.uuid4().hex[:6]}"
        self.dir = tempfile.mkdtemp(prefix="snverbs-")
        self.engine = FakeEngine(f"{self.dir}/docker.sock")
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        env = dict(os.environ, SECNET_SOCKET=f"{self.dir}/secnet.sock", SECNET_STATE_DIR=f"{self.dir}/state",
                   DOCKER_HOST=f"unix://{self.dir}/docker.sock", SECNET_LOG_LEVEL="warning",
                   PYTHONPATH=tree)
        self.log = open(f"{self.dir}/plugin.log", "w")
        main = "import sys; from plugin.daemon.server import main; sys.exit(main())"
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, f"{ROOT}/.venv/bin/python", "-c", main],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.plugin = Plugin(f"{self.dir}/secnet.sock", timeout=600)
        self.plugin.post("/Plugin.Activate", {}, patience=60)
        self.worker = _children(self.proc.pid)[0]

    def cpu_ns(self) -> int:
        total = 0
        base = f"/proc/{self.worker}/task"
        for tid in os.listdir(base):
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError):
                continue
        return total

    def ticks(self) -> int:
        with open(f"/proc/{self.worker}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])

    def post(self, verb: str, body: dict, out: dict) -> dict:
        c0, t0 = self.cpu_ns(), now()
        got = self.plugin.post(f"/NetworkDriver.{verb}", body)
        t1, c1 = now(), self.cpu_ns()
        out.setdefault(verb, []).append(((t1 - t0) * 1000, (c1 - c0) / 1e6))
        return got

    def stop(self) -> None:
        self.plugin.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        self.engine.stopped.set()
        self.engine.shutdown()
        self.engine.server_close()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_round(d: Daemon, r: int, runs: int, gap: float = 0.0) -> dict:
    """CreateNetwork, ``runs`` docker run + rm sequences, DeleteNetwork; {verb: [(wall, cpu)]}.
    ``gap``: seconds between CreateEndpoint's answer and Join (dockerd makes the container's
    sandbox there; 0: Join at once)."""
    out: dict = {}
    nid = uuid.uuid4().hex + uuid.uuid4().hex
    d.post("CreateNetwork", {"NetworkID": nid, "IPv4Data": [
        {"AddressSpace": "", "Pool": "10.217.0.0/24", "Gateway": "10.217.0.1/24"}], "IPv6Data": [],
        "Options": {"com.docker.network.generic": {}}}, out)
    d.engine.members[nid] = {}
    for i in range(runs):
        eid = uuid.uuid4().hex + uuid.uuid4().hex
        ep = {"NetworkID": nid, "EndpointID": eid}
        d.post("CreateEndpoint", {**ep, "Interface": {"Address": f"10.217.0.{10 + i}/24", "AddressIPv6": "",
                                                      "MacAddress": ""}, "Options": {}}, out)
        d.engine.members[nid][eid] = (f"snverbs-{r}-{i}", {"secnet.segment": "web" if i % 2 else "db"})
        if gap:
            time.sleep(gap)
        d.post("Join", {**ep, "SandboxKey": "", "Options": {}}, out)
        d.post("ProgramExternalConnectivity", {**ep, "Options": {}}, out)
        d.post("EndpointOperInfo", ep, out)
        d.post("RevokeExternalConnectivity", ep, out)
        d.post("Leave", ep, out)
        d.post("DeleteEndpoint", ep, out)
        del d.engine.members[nid][eid]
    d.post("DeleteNetwork", {"NetworkID": nid}, out)
    return out


def summary(rounds: list, label: str) -> dict:
    verbs = rounds[0][label].keys()
    return {v: {"wall_ms": stats([w for r in rounds for w, _ in r[label][v]])["median"],
                "cpu_ms": stats([c for r in rounds for _, c in r[label][v]])["median"]} for v in verbs}


def ratios(rounds: list, a: str, b: str) -> dict:
    """Median over rounds of (median of ``a`` / median of ``b``) per verb and for the sum of
    docker run's verbs, wall and CPU."""
    out = {}
    for key, idx in (("wall", 0), ("cpu", 1)):
        per = {}
        for r in rounds:
            med = {lab: {v: stats([x[idx] for x in r[lab][v]])["median"] for v in r[lab]} for lab in (a, b)}
            for v in med[a]:
                per.setdefault(v, []).append(med[a][v] / med[b][v] if med[b][v] else None)
            run = [sum(med[lab][v] for v in RUN_VERBS) for lab in (a, b)]
            per.setdefault("docker run (sum)", []).append(run[0] / run[1])
        out[key] = {v: round(stats([x for x in xs if x is not None])["median"], 3) for v, xs in per.items()}
    return out


def add_others(d: Daemon, count: int) -> None:
    """``count`` more networks of ``d`` (CreateNetwork, 10.218.<i>.0/24), kept through the
    rounds: the host's other networks, whose tables libnftables may read on every write."""
    for i in range(count):
        d.post("CreateNetwork", {"NetworkID": uuid.uuid4().hex + uuid.uuid4().hex, "IPv4Data": [
            {"AddressSpace": "", "Pool": f"10.218.{i}.0/24", "Gateway": f"10.218.{i}.1/24"}], "IPv6Data": [],
            "Options": {"com.docker.network.generic": {}}}, {})


def pair_rounds(base: str, pair: int, first: int, count: int, runs: int, gap: float, others: int = 0) -> tuple:
    """Rounds ``first``..``first + count - 1`` on a new pair of daemons, this tree's and
    ``base``'s (base's starts first in odd ``pair``s), each with ``others`` networks of its
    own made first (:func:`add_others`): (rounds, {label: the worker's CPU ms over them}).
    Both daemons are stopped on return, also on failure."""
    labels = ("this", "base") if pair % 2 == 0 else ("base", "this")
    daemons: dict = {}
    try:
        for label in labels:
            daemons[label] = Daemon(ROOT if label == "this" else base, label)
        for d in daemons.values():   # warm-up: first imports, first clients
            one_round(d, -1, 2)
        for d in daemons.values():
            add_others(d, others)
        ticks0 = {k: d.ticks() for k, d in daemons.items()}
        rounds = []
        for r in range(first, first + count):
            order = ("this", "base") if r % 2 == 0 else ("base", "this")
            rounds.append({k: one_round(daemons[k], r, runs, gap) for k in order})
        return rounds, {k: (d.ticks() - ticks0[k]) * 1000 / CLK_TCK for k, d in daemons.items()}
    finally:
        for d in daemons.values():
            d.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default=ROOT, help="tree to compare against (a git archive export)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds in all (split over the pairs)")
    parser.add_argument("--runs", type=int, default=10, help="docker run sequences per round")
    parser.add_argument("--pairs", type=int, default=4,
                        help="daemon pairs, one after the other (each process has a speed of its own)")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="ms between CreateEndpoint's answer and Join (dockerd's sandbox)")
    parser.add_argument("--others", type=int, default=0, choices=range(0, 256), metavar="N",
                        help="networks each daemon holds through the rounds (0-255)")
    args = parser.parse_args()
    if args.pairs < 1 or args.rounds < args.pairs:
        raise SystemExit("verbs: --pairs must be >= 1 and <= --rounds")
    rounds, cpu_all, per_pair = [], {"this": 0.0, "base": 0.0}, args.rounds // args.pairs
    for p in range(args.pairs):
        count = per_pair + (1 if p < args.rounds % args.pairs else 0)
        got, cpu = pair_rounds(os.path.abspath(args.base), p, len(rounds), count, args.runs, args.gap / 1000,
                               args.others)
        rounds += got
        for k, ms in cpu.items():
            cpu_all[k] += ms
    print(json.dumps({"this": summary(rounds, "this"), "base": summary(rounds, "base"),
                      "ratio_this_over_base": ratios(rounds, "this", "base"), "cpu_all_ms": cpu_all,
                      "rounds": args.rounds, "runs": args.runs, "pairs": args.pairs, "gap_ms": args.gap,
                      "others": args.others}, indent=1))


if __name__ == "__main__":
    main()
