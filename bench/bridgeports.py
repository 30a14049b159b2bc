"""A port's attach to a Linux bridge with few and with many ports, alternately (~1 min).

Run as root: ``.venv/bin/python -m bench.bridgeports [--ports N] [--rounds R]``. In a throwaway
network namespace: two bridges, one with 1 port and one with N (default 1,000; a bridge takes
at most 1,023), then R rounds (default 20, order flipped every round), each, on both bridges:
a veth pair made without a master (``veth_newlink``), put on the bridge (``link set master``:
``do_set_master`` -> ``br_add_if``, whose walks of the bridge's ports and FDB grow with them)
and set up (``br_stp_enable_port`` -> ``br_port_state_selection``, a walk of every port). The
same netlink requests as secnet's CreateEndpoint, split so that each kernel step is timed
alone (secnet makes the pair on its bridge in one request), with no daemon and no Python of
secnet's. Prints the medians (ms) per step and bridge and the median of the rounds' ratios
(N ports / 1 port) as JSON. Issue 12: the 1,000th join <= 1.1x the 1st.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import uuid

from pyroute2 import NetNS

STEPS = ("veth_add", "set_master", "up")


def _attach(ipr, bridge: int, name: str) -> tuple:
    """(ms of each of STEPS) for a new pair ``name``h/``name``p put on ``bridge``."""
    t0 = time.perf_counter()
    ipr.link("add", ifname=f"{name}h", kind="veth", peer=f"{name}p")
    t1 = time.perf_counter()
    index = ipr.link_lookup(ifname=f"{name}h")[0]
    t2 = time.perf_counter()
    ipr.link("set", index=index, master=bridge)
    t3 = time.perf_counter()
    ipr.link("set", index=index, state="up")
    t4 = time.perf_counter()
    return (t1 - t0) * 1000, (t3 - t2) * 1000, (t4 - t3) * 1000


def measure(ipr, ports: int, rounds: int) -> dict:
    bridges = {}
    for label, name in (("1", "snbp1"), ("n", "snbpn")):
        ipr.link("add", ifname=name, kind="bridge")
        bridges[label] = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=bridges[label], state="up")
    ipr.link("add", ifname="snf0h", kind="veth", peer="snf0p", master=bridges["1"])
    for i in range(ports - 1):
        ipr.link("add", ifname=f"snb{i}h", kind="veth", peer=f"snb{i}p", master=bridges["n"])
    times = {"1": [], "n": []}
    for r in range(rounds):
        for label in ("1", "n") if r % 2 == 0 else ("n", "1"):
            times[label].append(_attach(ipr, bridges[label], f"snt{label}{r}"))
    out = {"ports": ports, "rounds": rounds}
    for k, step in enumerate(STEPS):
        few, many = [t[k] for t in times["1"]], [t[k] for t in times["n"]]
        out[step] = {"ms_1_port": round(statistics.median(few), 3), f"ms_{ports}_ports": round(statistics.median(many), 3),
                     "ratio_median_of_rounds": round(statistics.median(b / a for a, b in zip(few, many)), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    name = f"snbports-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ipr = NetNS(name)
        try:
            print(json.dumps(measure(ipr, args.ports, args.rounds), indent=1))
        finally:
            ipr.close()
    finally:   # the namespace's links go with it
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
