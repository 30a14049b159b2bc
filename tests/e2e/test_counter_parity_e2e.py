"""`secnet show` gives the same rule counters on both backends for the same flows
(user7 finding U7-F2).

Contract (Backends): "Both give ... the same CLI output (`show`, `log`, `explain`,
`verify`, `metrics`)". Two egress CIDR rules that overlap, `web->OUT/24:tcp/8080` and
`web->OUT_HOST:tcp` (egress=deny), and the same connections from web to OUT_HOST:8080
on an nftables and an eBPF network: both count the flows' first packets for both rules
(eBPF had counted them for one). Segment rules that overlap (`web->api:tcp/8080`,
`web->*:tcp`) count a flow to 8080 for the port rule on both, and `explain` names that
rule first and the other after it (U7-O1).
"""
from __future__ import annotations

import json

import helpers as h
import seg_helpers as sh

FLOWS = 3


def rule_counters(make_network, run_container, backend: str, out: h.Container) -> dict:
    cidr = out.network.subnet
    rules = {f"web->{cidr}:tcp/8080", f"web->{out.ip}/32:tcp", "web->api:tcp/8080", "web->*:tcp"}
    net = make_network("sn-cpar", opts={"secnet.backend": backend, "secnet.egress": "deny",
                                        "secnet.allow": " ".join(sorted(rules))})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    for _ in range(FLOWS):
        h.assert_reaches(web, out, 8080)
        h.assert_reaches(web, api, 8080)
    got = {r["rule"]: r["packets"] for r in sh.show_json(net)["rules"]}
    assert set(got) >= rules, got
    assert got[f"web->{cidr}:tcp/8080"] == got[f"web->{out.ip}/32:tcp"] >= FLOWS, got   # both allow each flow
    why = json.loads(sh.secnet("--json", "explain", net.name, web.name, api.name, "tcp/8080", check=True).stdout)
    assert (why["rule"], why["also"]) == ("web->api:tcp/8080", ["web->*:tcp"]), why
    return {r: got[r] for r in sorted(rules)}


def test_overlapping_cidr_rules_count_alike_on_both_backends(make_network, run_container):
    outside = make_network("sn-cpar-out", driver="bridge")
    out = run_container(outside, "out")
    nft = rule_counters(make_network, run_container, "nftables", out)
    ebpf = rule_counters(make_network, run_container, "ebpf", out)
    assert sum(nft.values()) >= 2 * FLOWS, nft        # every flow counted somewhere
    assert nft == ebpf, f"nftables {nft} != ebpf {ebpf}"
