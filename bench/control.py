"""Section 1, control plane: network create/rm, and `docker run -d` until the
container's network answers (ICMP echo from the host to its address), secnet
against Docker's bridge driver, interleaved run by run so both see the same
machine load: each round times one of each, every other round bridge first
(neither driver always first), and keeps the round's ratio secnet / bridge
(``round_ratios``): a ratio within a round is free of the machine's drift
between rounds, which moves one driver's median by ~10 % from run to run on
this shared VM. A round that lost either sample (the plugin restarted under it,
no answer) gives no ratio."""
from __future__ import annotations

from .common import (IMAGE, PREFIX, Cleanup, create_network, disturbances, docker, log, network_bridge, now,
                     run_container, set_neigh_retrans, stats)
from .probes import HostPinger

DRIVERS = ("secnet", "bridge")
CREATE_SUBNET = {"secnet": "10.214.0.0/24", "bridge": "10.214.3.0/24"}
RUN_SUBNET = {"secnet": ("10.214.1.0/24", "10.214.1"), "bridge": ("10.214.2.0/24", "10.214.2")}


def order(i: int) -> tuple:
    """The drivers of round ``i``: secnet first in even rounds, bridge first in odd ones."""
    return DRIVERS if i % 2 == 0 else DRIVERS[::-1]


def round_ratios(rounds: list, key: str) -> dict:
    """Stats and values of secnet / bridge of ``key`` in each round that has both."""
    v = [r["secnet"][key] / r["bridge"][key] for r in rounds
         if r.get("secnet", {}).get(key) and r.get("bridge", {}).get(key)]
    return {"stats": stats(v), "raw": v}


def _create_rm_once(d: str):
    """ms of one ``docker network create`` and ``rm`` with driver ``d``; None when the
    plugin was restarted under them."""
    name = f"{PREFIX}-cp-{d}"
    n0 = disturbances()
    t0 = now()
    create_network(name, d, CREATE_SUBNET[d])
    t1 = now()
    docker("network", "rm", name)
    t2 = now()
    if disturbances() != n0:  # the plugin was restarted under us: not a sample
        return None
    return {"create": (t1 - t0) * 1000, "rm": (t2 - t1) * 1000}


def network_create_rm(runs: int) -> dict:
    times = {d: {"create": [], "rm": []} for d in DRIVERS}
    disturbed = {d: 0 for d in DRIVERS}
    rounds = []
    for i in range(runs):
        rounds.append({})
        for d in order(i):
            got = _create_rm_once(d)
            if got is None:
                disturbed[d] += 1
                continue
            rounds[-1][d] = got
            for k, v in got.items():
                times[d][k].append(v)
    out = {d: {k: {"stats": stats(v), "raw_ms": v} for k, v in times[d].items()} for d in DRIVERS}
    for d in DRIVERS:
        out[d]["disturbed"] = disturbed[d]
    out["round_ratios"] = {k: round_ratios(rounds, k) for k in ("create", "rm")}
    return out


def _run_once(pinger: HostPinger, d: str, i: int):
    """One ``docker run -d`` on driver ``d``'s network, timed until the host's ping answers:
    ``{"returned": ms, "answered": ms}``, "disturbed" (the plugin restarted under it) or
    "never" (no answer in 10 s). The container is removed before it returns."""
    cname = f"{PREFIX}-run-{d}-{i}"
    ip = f"{RUN_SUBNET[d][1]}.{10 + i}"
    n0 = disturbances()
    t0 = now()
    run_container(cname, f"{PREFIX}-run-{d}", ip)
    t1 = now()
    answered = pinger.wait_answer(ip, t1 + 10)
    docker("rm", "-f", cname)
    if disturbances() != n0:
        return "disturbed"
    if answered is None:
        log(f"control: {cname} ({ip}) never answered the host's ping")
        return "never"
    return {"returned": (t1 - t0) * 1000, "answered": (answered - t0) * 1000}


def run_until_answer(runs: int) -> dict:
    cleanup = Cleanup()
    raw = {d: {"run_returned_ms": [], "answered_ms": []} for d in DRIVERS}
    failures = {d: 0 for d in DRIVERS}
    disturbed = {d: 0 for d in DRIVERS}
    rounds = []
    pinger = HostPinger()
    cleanup.push("pinger", pinger.close)
    try:
        for d in DRIVERS:
            name = f"{PREFIX}-run-{d}"
            create_network(name, d, RUN_SUBNET[d][0])
            cleanup.push(f"network {name}", docker, "network", "rm", name)
            # the host's ARP for an address that is not answering yet retries
            # every 10 ms instead of 1 s (same setting for both drivers)
            set_neigh_retrans(None, network_bridge(name, d))
        docker("run", "--rm", "--network", "none", IMAGE, "true")  # warm the cache
        for i in range(runs):
            rounds.append({})
            for d in order(i):
                got = _run_once(pinger, d, i)
                if got == "disturbed":
                    disturbed[d] += 1
                elif got == "never":
                    failures[d] += 1
                else:
                    raw[d]["run_returned_ms"].append(got["returned"])
                    raw[d]["answered_ms"].append(got["answered"])
                    rounds[-1][d] = got
    finally:
        cleanup.run()
    out = {d: {"run_returned": stats(raw[d]["run_returned_ms"]),
               "answered": stats(raw[d]["answered_ms"]),
               "never_answered": failures[d], "disturbed": disturbed[d], "raw": raw[d]}
           for d in DRIVERS}
    out["round_ratios"] = {k: round_ratios(rounds, k) for k in ("answered", "returned")}
    return out


def run(sizes) -> dict:
    log(f"control plane: network create/rm x{sizes.cp_runs} per driver")
    out = {"network": network_create_rm(sizes.cp_runs)}
    log(f"control plane: docker run -d until the host's ping answers x{sizes.cp_runs} per driver")
    out["run"] = run_until_answer(sizes.cp_runs)
    out["method"] = ("`docker run -d --ip ADDR` (busybox `sleep`), then ICMP echo from the host to "
                     "ADDR every 2 ms (raw socket) until the first reply; time from the start of "
                     "`docker run` to that reply. ARP retransmit on both bridges set to 10 ms. "
                     "Runs interleaved secnet/bridge, every other round bridge first; each container "
                     "removed before the next. The targets are judged on the median of the rounds' "
                     "ratios secnet / bridge.")
    return out
