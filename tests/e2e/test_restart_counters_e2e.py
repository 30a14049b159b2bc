"""A daemon restart keeps what `secnet show` counts (finding U6-F1).

The contract's lifecycle: the daemon restores its rules from its state and the
kernel keeps enforcing while it is down; both backends give the same `show`
output. Rule and drop counters of a network therefore read after a restart at
least what they read before it (plus what the kernel counted while the daemon
was down), on every backend. Subnets from 10.231.0.0/16.
"""
from __future__ import annotations

import random

import pytest

import helpers as h
import vis_helpers as v

pytestmark = pytest.mark.usefixtures("backend")
RULE = "web->api:tcp/8080"


def _network(make_network) -> h.Network:
    for _ in range(20):
        try:
            return make_network("sn-u6rc", subnet=f"10.231.{random.randint(100, 199)}.0/24",
                                opts={"secnet.allow": RULE})
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise AssertionError("no free subnet in 10.231.100-199.0/24")


def _counters(net: h.Network) -> tuple:
    """(packets of RULE, packets dropped for no-rule) from `secnet show --json`."""
    data = v.secnet_json("show", net.name)
    rule = next(r for r in data["rules"] if r["rule"] == RULE)
    return rule["packets"], (data.get("dropped") or {}).get("no-rule", {}).get("packets", 0)


def test_counters_survive_a_daemon_restart(make_network, run_container, backend, request):
    if backend == "nftables":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="U6-F1: the nftables backend rebuilds its tables at restart and "
                                "its rule and drop counters start again at 0 (ebpf keeps them)"))
    net = _network(make_network)
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    h.assert_reaches(web, api, 8080)
    h.assert_not_reaches(api, web, 8080, tries=1)
    h.wait_until(lambda: all(_counters(net)), 5, "the rule and the drop to be counted")
    before = _counters(net)
    h.plugin_restart(kill=True)
    after = _counters(net)
    assert after[0] >= before[0] and after[1] >= before[1], (
        f"{backend}: counters went back across a restart: rule {RULE} packets {before[0]} -> "
        f"{after[0]}, dropped no-rule packets {before[1]} -> {after[1]}")
