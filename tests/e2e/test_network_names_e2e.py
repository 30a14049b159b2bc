"""The CLI shows networks by the names users gave them (user10, U10-F1): `secnet status`,
`show`, `verify` and the log of every network printed only a 12-character id."""
from __future__ import annotations

import helpers as h
import seg_helpers as s
from vis_helpers import secnet, secnet_json


def test_status_show_verify_and_log_name_the_network(make_network, run_container):
    net = make_network("sn-named", opts={"secnet.allow": "web->api:tcp/8080"})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    s.wait_segments(net, {web.name: "web", api.name: "api"})

    status = secnet("status").stdout.splitlines()
    line = next((l for l in status if net.id[:12] in l), "")
    assert net.name in line and "endpoints 2" in line, f"{net.name} not in its status line:\n" + "\n".join(status)
    entry = next(n for n in secnet_json("status")["networks"] if n["id"] == net.id)
    assert entry.get("name") == net.name, entry

    assert secnet("show", net.id).stdout.startswith(f"network {net.name} (bridge "), "show names no network"
    assert secnet_json("show", net.name).get("name") == net.name
    assert secnet("verify", net.name).stdout.startswith(f"verify network {net.name}: ")

    h.assert_not_reaches(api, web, h.LISTEN_PORT, tries=1)   # one drop for the log
    lines = h.wait_until(lambda: [l for l in secnet("log").stdout.splitlines() if api.name in l],
                         within=10, what="a log line of the dropped flow")
    assert all(f"  {net.name}  " in l for l in lines), lines
