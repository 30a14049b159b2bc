"""Container identity follows the engine (issue 10, kind 2): after `docker rename`
every command shows and accepts the new name, never the old one; a new
container that takes the old name is that name's only holder."""
from __future__ import annotations

import helpers as h
import vis_helpers as v

SEG = "secnet.segment"


def members(net) -> dict:
    """container name -> segment, from `secnet show --json`."""
    data = v.secnet_json("show", net.name)
    return {m["container"]: s["name"] for s in data["segments"] for m in s["members"]}


def explain(net, src, dst, service="tcp/8080") -> dict:
    return v.secnet_json("explain", net.name, src, dst, service)


def test_rename_then_a_new_container_takes_the_old_name(make_network, run_container):
    net = v.vis_network(make_network, "sn-rename", opts={"secnet.allow": "web->api:tcp/8080"})
    web = run_container(net, "web", labels={SEG: "web"})
    api = run_container(net, "api", labels={SEG: "api"})
    cursor = v.log_cursor()
    assert not v.tcp_try(web, api.ip, 9999)                    # a drop logged under the old name
    v.wait_entry(net, cursor, lambda e: e["dst"]["address"] == api.ip and e["dport"] == 9999)

    renamed = h.unique("api2")
    h.docker("rename", api.name, renamed)
    assert explain(net, web.name, renamed)["allowed"] is True          # at once, no waiting
    got = members(net)
    assert got.get(renamed) == "api" and api.name not in got, got
    res = v.secnet("explain", net.name, web.name, api.name, "tcp/8080")
    assert res.returncode != 0 and "is no container" in res.stderr, res.stderr
    old = [e for e in v.secnet_json("log", net.name)["entries"] if e["dport"] == 9999]
    assert old and {e["dst"]["container"] for e in old} == {renamed}, old   # logged before, shown now

    # a new container takes the old name, in a segment web may not reach
    newcomer = h.run_container_named(net, api.name, labels={SEG: "db"})
    verdict = explain(net, web.name, api.name)
    assert verdict["allowed"] is False and verdict["dst"]["segment"] == "db", verdict
    assert explain(net, web.name, renamed)["allowed"] is True
    assert not v.tcp_try(web, newcomer.ip, h.LISTEN_PORT)             # the packets agree
    assert v.tcp_try(web, api.ip, h.LISTEN_PORT)
    assert members(net).get(api.name) == "db"
    report = v.secnet_json("verify", net.name)
    names = {c["dst_container"] for c in report["cells"]} | {c["src_container"] for c in report["cells"]}
    assert renamed in names and report["ok"], report


def test_a_container_named_like_a_segment_is_an_error_until_the_kind_is_said(make_network, run_container):
    """U13-F2: a container named after a segment must not silently change what
    that segment's name means to `explain`; container:NAME / segment:NAME choose."""
    both = h.unique("seg")                                     # a container name and a segment name
    net = v.vis_network(make_network, "sn-namesake", opts={"secnet.allow": f"web->{both}:tcp/8080"})
    web = run_container(net, "web", labels={SEG: "web"})
    named = h.run_container_named(net, both, labels={SEG: "api"})   # removed with the network
    res = v.secnet("explain", net.name, web.name, both, "tcp/8080")
    err = res.stderr.strip()
    assert res.returncode != 0 and "\n" not in err, err
    assert f"names both container {both} (segment api" in err and f"segment:{both}" in err, err
    assert explain(net, web.name, f"segment:{both}")["allowed"] is True       # the rule web->both
    verdict = explain(net, web.name, f"container:{both}")
    assert verdict["allowed"] is False and verdict["dst"]["segment"] == "api", verdict
    assert v.tcp_try(web, named.ip, h.LISTEN_PORT) is False          # the packets agree
