"""Section 5, the datapaths alone (no Docker, no daemon), in throwaway namespaces.

Runs the two standalone benches as child processes and keeps their figures:
``bench.ebpf_datapath`` (iperf3 ``DP_SECS`` s, ping and a sockperf request/response
``RR_SECS`` s over a bare veth pair, a Linux bridge, the bridge with secnet's nftables
backend and with its eBPF backend, the eBPF backend with ``scale_rules`` more rules in force,
the floor: a program that only redirects, and the bare veth and eBPF pairs with Docker's
embedded-DNS NAT table in both ends, as Docker's containers have it), in ``dp_rounds``
interleaved rounds with the same CPU pinning on every pair: issue 13's ratios (eBPF / bare
veth, floor / bare veth, eBPF + N rules / eBPF) are the medians (min-max) of the per-round
ratios; and ``bench.nft_datapath`` (the nftables backend's calls as the reconciler makes
them: apply_network, a policy set from 0 to N rules, one rule added and one
removed with N in force, a mode switch, a join, at each N of the rule sweep).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from .common import REPO, log, sh, stats


DP_SECS, RR_SECS = 2, 1   # seconds of each iperf3 and sockperf run (10 rounds: the section's ~6 min)


def throughput(sizes) -> dict:
    """Per configuration: stats of Gbit/s, RTT µs and request/response µs over the rounds, and
    ``raw`` (with ``round``: the rounds it ran, for per-round ratios)."""
    with tempfile.TemporaryDirectory(prefix="snbench-") as tmp:
        path = os.path.join(tmp, "dp.json")
        sh([sys.executable, "-m", "bench.ebpf_datapath", "--secs", str(DP_SECS), "--rr-secs", str(RR_SECS),
            "--repeats", str(sizes.dp_rounds), "--rules", str(sizes.scale_rules), "--profile", "--floor",
            "--docker-nat", "--json", path], timeout=1200)
        with open(path) as f:
            raw = json.load(f)
    profiles = {k: raw.pop(k) for k in list(raw) if k.endswith("_profile")}
    profile = profiles.pop("ebpf_profile", {})
    for what, figures in profiles.items():     # the other eBPF pairs': "ebpf+10000 from_container ..."
        profile.update({f"{what[:-8]} {k}": v for k, v in figures.items()})
    out = {name: {"gbps": stats(v["gbps"]), "rtt_us": stats(v["rtt_us"]), "rr_us": stats(v["rr_us"]), "raw": v}
           for name, v in raw.items()}
    out["ebpf_profile"] = profile   # moved up to the section by run()
    return out


def nft_sweep(sizes) -> dict:
    """Per N: ms of each backend call (one run each)."""
    out = {}
    for n in sizes.rule_counts:
        res = sh([sys.executable, "-m", "bench.nft_datapath", "--rules", str(n)], timeout=900)
        out[str(n)] = json.loads(res.stdout)
        log(f"  nft backend at {n} rules: {out[str(n)]}")
    return out


def run(sizes) -> dict:
    os.chdir(REPO)  # the child processes import plugin/ and bench/ from the checkout
    log("datapath: veth / bridge / nftables / eBPF in namespaces")
    out = {"method": __doc__.strip(), "throughput": throughput(sizes)}
    # ns per eBPF program run and the share of packets bridged (bench.ebpf_datapath --profile)
    out["ebpf_profile"] = out["throughput"].pop("ebpf_profile", {})
    log(f"datapath: nftables backend at {sizes.rule_counts} rules")
    out["nft_backend"] = nft_sweep(sizes)
    log(f"datapath: the daemon's policy handler at {sizes.scale_rules} rules (bench.handler)")
    # --flow: the scale section's network carries its iperf flow; a removal then judges it
    res = sh([sys.executable, "-m", "bench.handler", "--rules", str(sizes.scale_rules), "--endpoints",
              str(sizes.endpoints), "--flow"], timeout=900, check=False)
    out["handler"] = json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr[-500:]}
    return out
