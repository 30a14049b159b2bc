"""A focused run of the scale section (no iperf, no other section): ~4 minutes.

Run as root with the plugin on its socket (``make bench``'s conditions):
``.venv/bin/python -m bench.focus [ENDPOINTS] [IDLE_SECONDS]``. With bench/scale.py's
pieces it grows ENDPOINTS (default 1,000) endpoints through the plugin API, then
times, as the CLI (one new process each): ``secnet status`` (the CLI's floor),
``policy get``, ``policy set`` of 10,000 rules (7 times, alternating two sets
that differ in every port), one rule ``add``/``remove`` with 10,000 in force (7
each), joins into a known and a new segment at 10,000 rules, daemon RSS at
each step and idle CPU; then removes everything. Prints one JSON object
(medians, ms and MiB; daemon memory as the RSS sum and, next to it, the Pss sum). For comparing commits quickly; ``make bench`` stays the
reference.
"""
from __future__ import annotations

import json
import sys
import time

from . import common, daemon, scale
from .common import Cleanup, Sizes, stats


def _median(values) -> float:
    return stats(values)["median"]


def _memory(out: dict, when: str, sample: dict) -> None:
    """``rss_<when>_mib`` (VmRSS summed over the daemon's processes) and, next to
    it, ``pss_<when>_mib`` (Pss summed: shared pages counted once), medians."""
    out[f"rss_{when}_mib"] = sample["median"]
    out[f"pss_{when}_mib"] = sample["pss_mib"]["median"]


def run(endpoints: int, idle: int) -> dict:
    sizes = Sizes(quick=False, cp_runs=0, enforce_runs=0, iperf_secs=1, dp_repeats=1, sweep_repeats=1,
                  endpoints=endpoints, join_marks=(1, 100, 500, endpoints), rss_marks=(0, 500, endpoints),
                  rule_counts=(10000,), update_repeats=7, idle_secs=idle, scale_rules=10000)
    out, cleanup = {}, Cleanup()
    sc = scale.Scale(sizes, cleanup)
    common.remove_leftovers()
    try:
        _memory(out, "start", daemon.daemon_rss_sample())
        sc.setup()
        sc.grow()
        out["join_ms_at"] = {k: v["median"] for k, v in sc.result["joins"]["marks"].items()}
        out["rss_mib_at"] = {k: v["median"] for k, v in sc.result["rss_mib"].items()}
        out["pss_mib_at"] = {k: v["pss_mib"]["median"] for k, v in sc.result["rss_mib"].items()}
        out["status_ms"] = _median(sc._cli_times(("status",), 7))
        out["policy_get_ms"] = _median(sc._cli_times(("policy", scale.NET), 5))
        sets = [sc.policy_set(scale.sweep_rules(10000, rep % 2) + scale.FLOW_RULES) for rep in range(7)]
        out["policy_set_10k_ms"] = _median(sets)
        status, add, remove = sc.edit_times(7)
        out["status_next_to_edits_ms"] = _median(status)
        out["one_rule_add_ms"], out["one_rule_remove_ms"] = _median(add), _median(remove)
        sc.joins_at_max_rules()
        at_max = sc.result["joins_at_max_rules"]
        out["join_known_segment_10k_ms"] = at_max["existing_segment"]["join_ms"]["median"]
        out["join_new_segment_10k_ms"] = at_max["new_segment"]["join_ms"]["median"]
        _memory(out, "at_scale", daemon.daemon_rss_sample())
        out["idle_cpu_percent"] = daemon.idle_cpu(idle)["percent_of_one_core"]
        sc.remove_endpoints()
        _memory(out, "after_endpoints_removed", sc.result["rss_after_removal_mib"])
    finally:
        cleanup.run()
        sc.plugin.close()
        common.remove_leftovers()
    time.sleep(3)
    _memory(out, "after_network_removed", daemon.daemon_rss_sample())
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(run(*(args + [1000, 20][len(args):])), indent=1))
