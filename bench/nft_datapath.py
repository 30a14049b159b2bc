"""Costs of the nftables datapath alone (no daemon, no Docker), in a throwaway namespace.

Run as root: ``python -m bench.nft_datapath [--rules N]``. Prints, for a
network of 100 segments and N rules (``s<i>->s<j>:tcp/<port>``, as in
bench/scale.py), the wall time of: apply_network with N rules; a policy
set from 0 to N rules (one apply_policy); one rule added and one removed
with N in force; a mode switch; a join; drift() when nothing changed;
counters(). Each is the backend call as the reconciler makes it.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
import uuid

from plugin.kernel import netns
from plugin.enforce.backend import NetworkSpec, Port
from plugin.enforce.nftables import NftBackend
from segmentation.identities import MemoryAllocator
from segmentation.options import parse_network_options
from segmentation.policymap import compile_policy_map

SEGMENTS = 100
NET = NetworkSpec("be0c4" + "0" * 59, "snbench0", ("10.238.0.0/16",), ("10.238.0.1",))


def sweep_rules(n: int, variant: int = 0) -> str:
    rules = []
    for k in range(n):
        i, j = k % SEGMENTS, (k // SEGMENTS) % SEGMENTS
        rules.append(f"s{i}->s{j}:tcp/{1000 + (k // (SEGMENTS * SEGMENTS)) * 10 + variant}")
    return " ".join(rules)


def policy(rules: str, ids):
    return compile_policy_map(parse_network_options({"secnet.allow": rules}), ids)


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000


def measure(n: int) -> dict:
    ids = MemoryAllocator().allocate(NET.id, [f"s{i}" for i in range(SEGMENTS)] + ["default"])
    ports = [Port(f"e{i}", f"snb{i}", f"02:42:0a:ee:{i // 256:02x}:{i % 256:02x}", f"10.238.{i // 256}.{i % 256 + 2}",
                  None, ids[f"s{i % SEGMENTS}"], f"s{i % SEGMENTS}") for i in range(200)]
    backend, out = NftBackend(), {}
    empty, full = policy("", ids), policy(sweep_rules(n), ids)
    out["apply_network_N"] = timed(backend.apply_network, NET, full, ports)
    backend.apply_network(NET, empty, ports)
    # the map after the delta is passed, as the reconciler passes it (else the backend copies
    # the whole map to apply the delta: 0.8 ms of a one-rule add at 50,000 rules)
    out["policy_set_0_to_N"] = timed(backend.apply_policy, NET, empty.delta(full), policy=full)
    one = policy(sweep_rules(n) + " s1->s2:tcp/7", ids)
    out["one_rule_add"] = timed(backend.apply_policy, NET, full.delta(one), policy=one)
    out["one_rule_remove"] = timed(backend.apply_policy, NET, one.delta(full), policy=full)
    audit = NetworkSpec(**{**NET.__dict__, "mode": "audit"})
    out["mode_switch"] = timed(backend.apply_policy, audit, full.delta(full), policy=full)
    joiner = Port("ej", "snbj", "02:42:0a:ee:ff:01", "10.238.255.2", None, ids["s5"], "s5")
    out["join"] = timed(backend.apply_ports, audit, [(None, joiner)])
    out["drift_unchanged"] = timed(backend.drift, audit, full, ports + [joiner])
    out["counters"] = timed(backend.counters, audit)
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    args = parser.parse_args()
    name = f"snbench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        print(json.dumps({"rules": args.rules, **netns.run_in(f"/run/netns/{name}", measure, args.rules,
                                                                timeout=600)}, indent=1))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
