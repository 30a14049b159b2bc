"""`secnet log` names no flow between two other containers as "quarantined", on both
backends (finding F3: ARP that the bridge flooded to a quarantined container's port
was logged as `u5-p (api) -> u5-w (web) arp quarantined`).

The mechanism is checked in the kernel tier (tests/kernel/test_flooded_copies_kernel.py);
this is the user's view: real containers, the daemon's drop log.
"""
from __future__ import annotations

import time

import pytest

import helpers as h
import seg_helpers as s
import vis_helpers as v

pytestmark = pytest.mark.usefixtures("backend")
PORT = h.LISTEN_PORT


def test_flooded_arp_is_not_logged_at_a_quarantined_port(make_network, run_container):
    net = make_network("sn-fl", ipv6=True, opts={"secnet.allow": f"web->api:tcp/{PORT}"})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    bad = run_container(net, "bad", labels={"secnet.segment": "bad name"})
    s.wait_segments(net, {web.name: "web", api.name: "api", bad.name: "quarantined"})
    since = v.log_cursor()
    for c in (web, api):
        h.run(["nsenter", f"--net={c.sandbox}", "ip", "neigh", "flush", "all"])
    h.assert_reaches(web, api, PORT)                 # ARP broadcasts, flooded to bad's port
    h.assert_reaches(web, api, PORT, family=6)       # neighbour solicitations (multicast)
    h.assert_not_reaches(web, bad, PORT)             # meant for bad: judged and logged
    time.sleep(0.5)
    entries = v.log_since(net, since)["entries"]
    others = {web.ip, web.ip6, api.ip, api.ip6}
    noise = [e for e in entries if e["reason"] == "quarantined" and e["dst"]["address"] in others]
    assert noise == [], f"flows between others logged as quarantined: {noise[:2]}"
    meant = [e for e in entries if e["reason"] == "quarantined" and e["dst"]["address"] == bad.ip]
    assert meant, f"web -> {bad.name} was not logged as quarantined: {entries[:5]}"
