"""A hairpin flow that policy drops is logged the same way by both backends.

Found by black-box testing (user8, finding U8-F3): a member of segment db
reaching api's published port through the gateway (hairpin) with no db->api
rule is dropped on both backends (a hairpin is east-west, U12-F3). nftables
logs it after DNAT, as the flow it is (`db -> api tcp/8080`); ebpf judges it
at the sender before DNAT and logged `db -> <gateway> (outside) tcp/<host port>`;
it now names the member behind the port (plugin.enforce.ebpf.events.hairpin_target).
Contract (Backends): "the same CLI output (`show`, `log`, `explain`, ...)";
(CLI) `secnet log` names "destination (container, segment, address ...)".
"""
from __future__ import annotations

import random

import pytest

import helpers as h
import vis_helpers as v

SEG = "secnet.segment"


@pytest.mark.parametrize("backend_name", ["nftables", "ebpf"])
def test_a_dropped_hairpin_flow_names_the_target_container(make_network, run_container, backend_name):
    net = v.vis_network(make_network, "sn-u8-hairpin", ipv6=False, opts={
        "secnet.backend": backend_name,
        "secnet.allow": "web->api:tcp/8080"})   # (no CIDR rule: db is dropped as no-rule, U12-F3)
    port = random.randint(18800, 18999)
    api = run_container(net, "api", labels={SEG: "api"}, extra=["-p", f"{port}:{h.LISTEN_PORT}"])
    db = run_container(net, "db", labels={SEG: "db"})
    gateway = net.subnet.rsplit(".", 1)[0] + ".1"
    cursor = v.log_cursor()
    assert not v.tcp_try(db, gateway, port, timeout=1.0), "db reached api's published port (hairpin)"
    entry, _ = v.wait_entry(net, cursor, lambda e: e["src"].get("container") == db.name
                            and e["proto"] == "tcp")
    seen = (entry["dst"].get("container"), entry["dst"].get("address"), entry["dport"])
    assert seen == (api.name, api.ip, h.LISTEN_PORT), \
        f"the drop is logged as db -> {seen}, not as db -> api ({api.ip}) tcp/{h.LISTEN_PORT}"
