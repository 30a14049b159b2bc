"""A join at ~1 endpoint against a join at N endpoints, interleaved (issue 12's "the 1,000th
join <= 1.1x the 1st", split per verb and into wall and CPU).

Run as root: ``python -m bench.joinscale [--endpoints N] [--rounds R] [--joins K]``. Two private
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
over all requests of a verb: coarse, 10 ms ticks) to tell Python from kernel time.

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


def summary(rounds: list, daemons: dict) -> dict:
    out = {}
    for verb in VERBS:
        row = {}
        for label, d in daemons.items():
            xs = [x for r in rounds for x in r[label][verb]]
            user, system, n = d.ticks_by_verb.get(verb, (0, 0, 1))
            row[label] = {"wall_ms": round(stats([w for w, _ in xs])["median"], 3),
                          "cpu_ms": round(stats([c for _, c in xs])["median"], 3),
                          "user_sys_ms": [round(user * 1000 / CLK_TCK / n, 2), round(system * 1000 / CLK_TCK / n, 2)]}
        for idx, key in ((0, "wall"), (1, "cpu")):
            per = [stats([x[idx] for x in r["big"][verb]])["median"] / stats([x[idx] for x in r["small"][verb]])["median"]
                   for r in rounds]
            row[f"ratio_{key}"] = round(stats(per)["median"], 3)
        out[verb] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--joins", type=int, default=6, help="joins per daemon per round")
    args = parser.parse_args()
    if not 0 < args.endpoints <= 1000:
        raise SystemExit("joinscale: --endpoints must be 1..1000 (a bridge takes 1,023 ports)")
    daemons = {"small": Counted(ROOT, "small"), "big": Counted(ROOT, "big")}
    nets, kept, rounds = {}, [], []
    try:
        nets = {label: make_network(d) for label, d in daemons.items()}
        for i in range(1, args.endpoints + 1):
            kept.append(join(daemons["big"], nets["big"], i, {}, keep=True))
        for label, d in daemons.items():   # warm-up
            join(d, nets[label], args.endpoints + 2, {})
            d.counting = True
        for r in range(args.rounds):
            order = ("small", "big") if r % 2 == 0 else ("big", "small")
            rnd: dict = {label: {} for label in order}
            for label in order:
                for j in range(args.joins):
                    join(daemons[label], nets[label], args.endpoints + 3 + j, rnd[label])
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
    print(json.dumps({"endpoints": args.endpoints, "rounds": args.rounds, "joins": args.joins,
                      "verbs": summary(rounds, daemons)}, indent=1))


if __name__ == "__main__":
    main()
