#!/usr/bin/env python3
"""Measure how soon a starting container's segment is enforced.

Usage (as root, engine and plugin running):
    .venv/bin/python scripts/measure-enforce.py [--starts 60] [--window 3] [--json]

One dual-stack secnet network in 10.239.0.0/16 / fd00:237::/48 with the policy
``web->api:tcp/8080, api->web:tcp/8080``; an ``api`` and a ``db`` peer listen on
8080. A ``web`` container with a fixed address is started ``--starts`` times
(``docker run -d``, removed after each round). During each start a racer probes
in a tight loop (new socket, 50 ms connect timeout):

* from the new container's own netns, as soon as Docker creates it (bound to the
  container's fixed address, so no other netns sends): to api (allowed) and db
  (forbidden);
* from api (allowed) and db (forbidden) towards the new container.

Reported: the delay from ``docker run -d`` returning until the allowed peer first
answers, each way (negative: before the command returned), as p50/p90/p99/max;
the same from the moment the container's address appeared in its netns (the
time the container could send but was still held back: fail closed); and the number of forbidden probes that got through (must be 0). Exit 1 when a
forbidden probe got through or an allowed peer never answered.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "e2e")]

import helpers as h  # noqa: E402
import seg_helpers as s  # noqa: E402

PORT = h.LISTEN_PORT


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100 * len(v) + 0.5)) - 1))
    return v[k]


def make_network(name):
    for _ in range(20):
        try:
            return h.create_network(name, ipv6=True, subnet=s.pick4(), subnet6=s.pick6(),
                                    opts={"secnet.allow": "web->api:tcp/8080,api->web:tcp/8080"})
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise SystemExit("no free subnet in 10.237-239.0.0/16")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--starts", type=int, default=60)
    ap.add_argument("--window", type=float, default=3.0,
                    help="seconds after `docker run -d` returned that are watched")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not h.plugin_answers():
        raise SystemExit("the secnet plugin does not answer: bash scripts/plugin.sh start")
    h.script("test-image.sh")

    net = make_network(h.unique("sn-measure"))
    names = []
    out_delays, in_delays, addr_delays, forbidden, missing, netns_found = [], [], [], [], [], 0
    try:
        api = h.run_container(net, "m-api", labels={"secnet.segment": "api"})
        db = h.run_container(net, "m-db", labels={"secnet.segment": "db"})
        names += [api.name, db.name]
        s.wait_segments(net, {api.name: "api", db.name: "db"})
        ip4 = s.host_addr(net.subnet, 100 + random.randint(0, 50))
        ip6 = s.host_addr(net.subnet6, 0x100)
        name = h.unique("m-web")
        names.append(name)
        to_new = [[ip4, PORT], [ip6, PORT]]
        for i in range(args.starts):
            racer = s.Racer(bind=ip4, targets=[[api.ip, PORT], [db.ip, PORT], [db.ip6, PORT]],
                            peers=[(api, to_new), (db, to_new)])
            try:
                h.docker("run", "-d", "--name", name, "--network", net.name, "--ip", ip4, "--ip6", ip6,
                         "--label", "secnet.segment=web", h.IMAGE, *h.listen_cmd(PORT))
                t0 = time.monotonic()
                time.sleep(args.window)
            finally:
                res = racer.finish()
                h.docker("rm", "-f", name, check=False)
            hits = res.get("hits", [])
            netns_found += any(k.startswith("new:") for k in res.get("attempts", {}))
            bad = [x for x in hits if x[2].startswith((db.ip + ":", db.ip6 + ":"))
                   or x[1] == "peer:" + db.name]
            forbidden += [(i, x) for x in bad]
            bound = min(res.get("bound", {}).values(), default=None)
            out = [x[0] for x in hits if x[1].startswith("new:") and x[2] == f"{api.ip}:{PORT}"]
            if out and bound is not None:
                addr_delays.append(min(out) - bound)
            inn = [x[0] for x in hits if x[1] == "peer:" + api.name]
            (out_delays.append(min(out) - t0) if out else missing.append((i, "new -> api")))
            (in_delays.append(min(inn) - t0) if inn else missing.append((i, "api -> new")))
            if not args.json:
                print(f"start {i + 1:3d}: new->api {((min(out) - t0) * 1000) if out else float('nan'):7.1f} ms"
                      f"   api->new {((min(inn) - t0) * 1000) if inn else float('nan'):7.1f} ms"
                      f"   forbidden through: {len(bad)}", flush=True)
    finally:
        if names:
            h.docker("rm", "-f", *names, check=False)
        h.remove_network(net)

    def summary(values):
        return {"n": len(values), **{f"p{p}_ms": round(pct(values, p) * 1000, 1) for p in (50, 90, 99)},
                "min_ms": round(min(values) * 1000, 1) if values else None,
                "max_ms": round(max(values) * 1000, 1) if values else None,
                "before_run_returned": sum(1 for v in values if v < 0)}

    report = {"starts": args.starts, "netns_probed": netns_found,
              "new_to_allowed_peer": summary(out_delays), "allowed_peer_to_new": summary(in_delays),
              "new_to_allowed_peer_after_its_address_appeared": summary(addr_delays),
              "forbidden_successes": len(forbidden), "forbidden_examples": forbidden[:5],
              "allowed_never_answered": missing}
    print(json.dumps(report, indent=2))
    return 1 if forbidden or missing else 0


if __name__ == "__main__":
    sys.exit(main())
