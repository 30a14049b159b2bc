"""A join at ~1 endpoint against a join at N endpoints, interleaved (issue 12's "the 1,000th
join <= 1.1x the 1st", split per verb and into wall and CPU).

Run as root: ``python -m bench.joinscale [--endpoints N] [--rounds R] [--joins K] [--pairs P]``. Two private
daemons of this tree (:class:`bench.verbs.Daemon`: each in a throwaway network namespace with a
stand-in engine; nothing on the host or in Docker is touched, no e2e lock needed), each with one
network laid out like bench/scale.py's (10.216.0.0/20, the 100-rule ring ``s<i>->s<i+1>:tcp/80``,
endpoints from 10.216.4.1 with ``secnet.segment=s<k>``, ten per segment). "big" first gets N
endpoints (CreateEndpoint + Join, kept); "small" none. Each round, in alternating order, each
daemon does K times CreateEndpoint, Join, Leave, DeleteEndpoint of a new endpoint (so "big" stays
at N+1 while it is measured). Per verb: the median wall time at the client and CPU time of the
worker (all its threads, /proc schedstat: kernel time on its behalf included, child processes
and kernel workers not), ms; ``ratio``: the median over rounds of big/small of each round's
medians; ``user_sys_ms``: utime and stime per request from /proc/PID/stat (clock ticks summed
over all requests of a verb: coarse, 10 ms ticks) to tell Python from kernel time. ``join``:
the same for CreateEndpoint + Join of each endpoint (what ``make bench``'s "1,000th join <= 1.1x
the 1st" times: bench/scale.py), its ratio the median over rounds of big/small of each round's
median sum; ``ratio_wall_range``, ``ratio_cpu_range``: the lowest and highest round's ratio (how
noisy the rounds were).

The rounds are split over P pairs of daemons started one pair after the other (``--pairs``,
default 1; the big one starts first in every other pair: give an even number): a daemon process has a speed of its
own (bench.verbs' docstring), and one pair's ratio is partly that pair's (``join_by_pair``: the
join ratios of each pair, and which daemon started first). An A/A of this module
(``--endpoints 1``, one pair, 16 rounds x 6) gave CreateEndpoint + Join 0.89x wall, 0.95x CPU
(rounds 0.71-1.15x, 0.77-1.20x); bench/results/2026-12-02-join4.md.

Both daemons hold the same code, so any ratio above 1 is what N endpoints cost (in the daemon
or in the kernel: the bridge's ports, the neighbour entries, the nft sets' elements).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import uuid

from .common import CLK_TCK, stats
from .verbs import ROOT, Daemon

VERBS = ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")
FIRST = ipaddress.IPv4Address("10.216.4.1")
RING = ",".join(f"s{i}->s{(i + 1) % 100}:tcp/80" for i in range(100))


class Counted(Daemon):
    """:class:`Daemon` that also sums the worker's utime/stime ticks per verb while ``counting``."""

    def __init__(self, tree: str, label: str):
        super().__init__(tree, label)
        self.counting, self.ticks_by_verb = False, {}

    def _user_sys(self) -> tuple:
        with open(f"/proc/{self.worker}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])

    def post(self, verb: str, body: dict, out: dict) -> dict:
        if not self.counting:
            return super().post(verb, body, out)
        before = self._user_sys()
        got = super().post(verb, body, out)
        after = self._user_sys()
        row = self.ticks_by_verb.setdefault(verb, [0, 0, 0])
        row[0] += after[0] - before[0]
        row[1] += after[1] - before[1]
        row[2] += 1
        return got


def make_network(d: Daemon) -> str:
    nid = uuid.uuid4().hex * 2
    d.post("CreateNetwork", {"NetworkID": nid, "IPv4Data": [
        {"AddressSpace": "", "Pool": "10.216.0.0/20", "Gateway": "10.216.0.1/20"}], "IPv6Data": [],
        "Options": {"com.docker.network.generic": {"secnet.allow": RING}}}, {})
    d.engine.members[nid] = {}
    return nid


def join(d: Daemon, nid: str, i: int, out: dict, keep: bool = False) -> str:
    """Endpoint ``i`` (address FIRST + i - 1) made and joined; left and deleted unless ``keep``."""
    eid = (f"5b{i:06x}" + uuid.uuid4().hex * 2)[:64]
    ep = {"NetworkID": nid, "EndpointID": eid}
    d.post("CreateEndpoint", {**ep, "Interface": {"Address": f"{FIRST + (i - 1)}/20", "AddressIPv6": "",
                                                  "MacAddress": ""},
                              "Options": {"secnet.segment": f"s{(i - 1) // 10 % 100}"}}, out)
    d.engine.members[nid][eid] = (f"snjoinscale-{i}", {})
    d.post("Join", {**ep, "SandboxKey": "", "Options": {}}, out)
    if not keep:
        d.post("Leave", ep, out)
        d.post("DeleteEndpoint", ep, out)
        del d.engine.members[nid][eid]
    return eid


def summary(rounds: list, ticks: dict) -> dict:
    """Per verb (and ``join``: CreateEndpoint + Join) the figures of the module's docstring;
    ``ticks``: {label: {verb: [utime, stime, requests]}}."""
    out = {}
    for verb in VERBS:
        row = {}
        for label in ("small", "big"):
            xs = [x for r in rounds for x in r[label][verb]]
            user, system, n = ticks[label].get(verb, (0, 0, 1))
            row[label] = {"wall_ms": round(stats([w for w, _ in xs])["median"], 3),
                          "cpu_ms": round(stats([c for _, c in xs])["median"], 3),
                          "user_sys_ms": [round(user * 1000 / CLK_TCK / n, 2), round(system * 1000 / CLK_TCK / n, 2)]}
        for idx, key in ((0, "wall"), (1, "cpu")):
            per = [stats([x[idx] for x in r["big"][verb]])["median"] / stats([x[idx] for x in r["small"][verb]])["median"]
                   for r in rounds]
            row[f"ratio_{key}"] = round(stats(per)["median"], 3)
            row[f"ratio_{key}_range"] = [round(min(per), 3), round(max(per), 3)]
        out[verb] = row
    row = {}
    for label in ("small", "big"):
        sums = [_join_sums(r[label]) for r in rounds]
        row[label] = {key: round(stats([x[idx] for xs in sums for x in xs])["median"], 3)
                      for idx, key in ((0, "wall_ms"), (1, "cpu_ms"))}
    for idx, key in ((0, "wall"), (1, "cpu")):
        per = [stats([x[idx] for x in _join_sums(r["big"])])["median"]
               / stats([x[idx] for x in _join_sums(r["small"])])["median"] for r in rounds]
        row[f"ratio_{key}"] = round(stats(per)["median"], 3)
        row[f"ratio_{key}_range"] = [round(min(per), 3), round(max(per), 3)]
    out["join"] = row
    return out


def _join_sums(verbs: dict) -> list:
    """[(wall ms, CPU ms)] of CreateEndpoint + Join, endpoint by endpoint (``join`` posts
    them in that order, one endpoint after the other)."""
    return [(c[0] + j[0], c[1] + j[1]) for c, j in zip(verbs["CreateEndpoint"], verbs["Join"])]


def pair_rounds(pair: int, first: int, count: int, endpoints: int, joins: int) -> tuple:
    """Rounds ``first``..``first + count - 1`` on a new pair of daemons (the small one starts
    first in even ``pair``s): (rounds, {label: ticks by verb}). Both daemons are stopped on
    return, also on failure."""
    labels = ("small", "big") if pair % 2 == 0 else ("big", "small")
    daemons: dict = {}
    nets, kept, rounds = {}, [], []
    try:
        for label in labels:
            daemons[label] = Counted(ROOT, label)
        nets = {label: make_network(d) for label, d in daemons.items()}
        for i in range(1, endpoints + 1):
            kept.append(join(daemons["big"], nets["big"], i, {}, keep=True))
        for label, d in daemons.items():   # warm-up
            join(d, nets[label], endpoints + 2, {})
            d.counting = True
        for r in range(first, first + count):
            order = ("small", "big") if r % 2 == 0 else ("big", "small")
            rnd: dict = {label: {} for label in order}
            for label in order:
                for j in range(joins):
                    join(daemons[label], nets[label], endpoints + 3 + j, rnd[label])
            rounds.append(rnd)
    finally:
        try:
            for d in daemons.values():
                d.counting = False
            for eid in kept:
                ep = {"NetworkID": nets["big"], "EndpointID": eid}
                daemons["big"].post("Leave", ep, {})
                daemons["big"].post("DeleteEndpoint", ep, {})
            for label, nid in nets.items():
                daemons[label].post("DeleteNetwork", {"NetworkID": nid}, {})
        finally:
            for d in daemons.values():   # each removes its namespace (its links, its tables), engine, directory
                d.stop()
    return rounds, {label: d.ticks_by_verb for label, d in daemons.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=16, help="rounds in all (split over the pairs)")
    parser.add_argument("--joins", type=int, default=6, help="joins per daemon per round")
    parser.add_argument("--pairs", type=int, default=1,
                        help="daemon pairs, one after the other (each process has a speed of its own: "
                             "bench.verbs' docstring)")
    args = parser.parse_args()
    if not 0 < args.endpoints <= 1000:
        raise SystemExit("joinscale: --endpoints must be 1..1000 (a bridge takes 1,023 ports)")
    if args.pairs < 1 or args.rounds < args.pairs:
        raise SystemExit("joinscale: --pairs must be >= 1 and <= --rounds")
    rounds: list = []
    ticks: dict = {"small": {}, "big": {}}
    by_pair: list = []
    per_pair = args.rounds // args.pairs
    for p in range(args.pairs):
        count = per_pair + (1 if p < args.rounds % args.pairs else 0)
        got, pair_ticks = pair_rounds(p, len(rounds), count, args.endpoints, args.joins)
        rounds += got
        joins = summary(got, pair_ticks)["join"]
        by_pair.append({"first": "small" if p % 2 == 0 else "big",
                        **{k: joins[k] for k in ("ratio_wall", "ratio_cpu")}})
        for label, by_verb in pair_ticks.items():
            for verb, row in by_verb.items():
                total = ticks[label].setdefault(verb, [0, 0, 0])
                for k in range(3):
                    total[k] += row[k]
    print(json.dumps({"endpoints": args.endpoints, "rounds": args.rounds, "joins": args.joins,
                      "pairs": args.pairs, "verbs": summary(rounds, ticks), "join_by_pair": by_pair}, indent=1))


if __name__ == "__main__":
    main()
