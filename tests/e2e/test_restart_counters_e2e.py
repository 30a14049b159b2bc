"""`secnet show` counters go on across a daemon restart, on both backends (finding O1:
nftables' rule counters restarted at 0 while eBPF's carried on).

The nftables backend adopts a network's intact tables on restart instead of
rewriting them (plugin/enforce/nftables/backend.py, ``_adopt``); the kernel tier
checks the mechanism (tests/kernel/test_restart_counters_kernel.py), this the
daemon's real restart path (restore, the reconciler's first full pass).
"""
from __future__ import annotations

import pytest

import helpers as h
import seg_helpers as s
import vis_helpers as v

pytestmark = pytest.mark.usefixtures("backend")
RULE = f"web->api:tcp/{h.LISTEN_PORT}"


def _counts(net) -> tuple:
    """(packets the rule allowed, packets dropped for no rule), from `secnet show --json`."""
    show = v.secnet_json("show", net.name)
    rule = next(r for r in show["rules"] if r["rule"] == RULE)
    return rule["packets"], show["dropped"]["no-rule"]["packets"]


@pytest.mark.exclusive
def test_show_counters_go_on_across_a_restart(make_network, run_container):
    net = make_network("sn-rc", opts={"secnet.allow": RULE})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    s.wait_segments(net, {web.name: "web", api.name: "api"})
    for _ in range(3):
        h.assert_reaches(web, api, h.LISTEN_PORT)
    h.assert_not_reaches(api, web, h.LISTEN_PORT)
    allowed, dropped = _counts(net)
    assert allowed >= 3 and dropped >= 1, (allowed, dropped)
    h.plugin_restart(kill=True)
    after = _counts(net)
    assert after[0] >= allowed and after[1] >= dropped, \
        f"counters went back from {(allowed, dropped)} to {after} across the restart"
    h.assert_reaches(web, api, h.LISTEN_PORT)
    assert _counts(net)[0] > allowed
