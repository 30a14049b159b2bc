"""Flows after a change of state, on both backends (contract: "When a rule change or a
container's removal is in force, no flow that the new state does not allow goes on"; and a
flow the new state still allows goes on).

Kinds of change not in test_flows_e2e: a container that takes a removed one's address as a
*sender* (same address, same source port: the old flow's 5-tuple), the rule of one
direction removed while both directions carry flows, edits that leave a stream allowed,
and `secnet mode enforce` with published-port flows from the host. Each stream is one
flow (one TCP connection, or one fixed UDP source port).
"""
from __future__ import annotations

import random
import time

import pytest

import flow_helpers as fh
import helpers as h
import ns_helpers as n
import seg_helpers as sh

pytestmark = pytest.mark.usefixtures("backend")

SEG = "secnet.segment"



def _network(make_network, name, opts):
    for _ in range(20):
        s4 = f"10.235.{random.randint(0, 255)}.0/24"
        s6 = f"fd00:235:0:{random.randint(0, 255):x}::/64"
        try:
            return make_network(name, ipv6=True, subnet=s4, subnet6=s6, opts=opts)
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise AssertionError("no free subnet in 10.235.0.0/16")


def _run(run_container, net, name, segment, *ports, ip=None, ip6=None):
    extra = [a for p in ports for a in ("-p", p)] + (["--ip", ip] if ip else []) + \
        (["--ip6", ip6] if ip6 else [])
    labels = {SEG: segment} if segment is not None else None
    return run_container(net, name, labels=labels, cmd=n.SLEEP, extra=extra)


@pytest.mark.parametrize("segment", ["db", ""], ids=["other-segment", "quarantined"])
def test_a_sender_that_takes_a_removed_ones_address_and_source_port_is_judged_afresh(
        make_network, run_container, flows, segment):
    """web streams UDP to api from a fixed source port (allowed); web is removed and a container
    of a segment with no rule to api (or a quarantined one) takes web's addresses and sends from
    the same source port to the same api port: the old flow's 5-tuple. Its datagrams must not
    reach api (IPv4, IPv6)."""
    net = _network(make_network, "u9-ct-snd", {"secnet.allow": "web->api:udp/5353"})
    a4, a6 = fh.host_in(net.subnet, 60), fh.host_in(net.subnet6, 0x60)
    api = _run(run_container, net, "u9-api", "api")
    web = _run(run_container, net, "u9-web", "web", ip=a4, ip6=a6)
    sink = flows.sink(api, [("udp", 5353)])
    old4 = flows.stream(web, "w4", "udp", api.ip, 5353, sport=41000)
    old6 = flows.stream(web, "w6", "udp", api.ip6, 5353, sport=41000)
    fh.all_flowing(sink, ["w4", "w6"])
    old4.stop()
    old6.stop()
    h.docker("rm", "-f", web.name)
    new = _run(run_container, net, "u9-new", segment, ip=a4, ip6=a6)
    flows.stream(new, "n4", "udp", api.ip, 5353, sport=41000)
    flows.stream(new, "n6", "udp", api.ip6, 5353, sport=41000)
    time.sleep(3)
    got = {tag: sink.count(tag) for tag in ("n4", "n6") if sink.count(tag)}
    assert not got, f"datagrams of the new {segment or 'quarantined'} container reached api: {got}"
    if segment:     # the new container's streams do run: a rule for its segment lets them in
        assert sh.secnet("policy", net.name, "add", f"{segment}->api:udp/5353").returncode == 0
        fh.all_flowing(sink, ["n4", "n6"])


def test_removing_one_directions_rule_keeps_the_other_directions_flows(make_network, run_container, flows):
    """web->api and api->web both allowed, streams each way (TCP and UDP, IPv4 and IPv6);
    `policy remove api->web...`: api's streams to web stop, web's streams to api (whose replies
    go api->web) go on."""
    rules = "web->api:tcp/8080 web->api:udp/5353 api->web:tcp/8080 api->web:udp/5353"
    net = _network(make_network, "u9-ct-dir", {"secnet.allow": rules})
    api = _run(run_container, net, "u9-api", "api")
    web = _run(run_container, net, "u9-web", "web")
    to_api = flows.sink(api, [("tcp", 8080), ("udp", 5353)])
    to_web = flows.sink(web, [("tcp", 8080), ("udp", 5353)])
    for (src, dst, sink, pre) in ((web, api, to_api, "wa"), (api, web, to_web, "aw")):
        flows.stream(src, f"{pre}t4", "tcp", dst.ip, 8080)
        flows.stream(src, f"{pre}t6", "tcp", dst.ip6, 8080)
        flows.stream(src, f"{pre}u4", "udp", dst.ip, 5353, sport=42000)
        flows.stream(src, f"{pre}u6", "udp", dst.ip6, 5353, sport=42000)
    tags = ("t4", "t6", "u4", "u6")
    fh.all_flowing(to_api, ["wa" + t for t in tags])
    fh.all_flowing(to_web, ["aw" + t for t in tags])
    res = sh.secnet("policy", net.name, "remove", "api->web:tcp/8080", "api->web:udp/5353")
    assert res.returncode == 0, res.stderr
    going = fh.still_going(to_web, ["aw" + t for t in tags], watch=1.5)
    assert not going, f"api's flows to web went on after their rule was removed: {going}"
    fh.all_flowing(to_api, ["wa" + t for t in tags], within=3)


def test_edits_that_still_allow_a_flow_keep_it(make_network, run_container, flows):
    """Long-lived web->api streams (TCP, UDP; IPv4, IPv6) survive unrelated edits: rules of other
    segments added, removed and set, the mode switched to audit and back, a container of
    another segment started and removed."""
    rules = "web->api:tcp/8080 web->api:udp/5353"
    net = _network(make_network, "u9-ct-keep", {"secnet.allow": rules})
    api = _run(run_container, net, "u9-api", "api")
    web = _run(run_container, net, "u9-web", "web")
    sink = flows.sink(api, [("tcp", 8080), ("udp", 5353)])
    streams = {"t4": ("tcp", api.ip, 8080), "t6": ("tcp", api.ip6, 8080),
               "u4": ("udp", api.ip, 5353), "u6": ("udp", api.ip6, 5353)}
    for tag, (proto, dst, port) in streams.items():
        flows.stream(web, tag, proto, dst, port, sport=43000 if proto == "udp" else 0)
    fh.all_flowing(sink, streams)
    edits = [("policy", net.name, "add", "mon->db:tcp/5432"),
             ("policy", net.name, "remove", "mon->db:tcp/5432"),
             ("policy", net.name, "set", rules, "db->api:tcp/9000", "10.235.250.0/24->db:tcp/1"),
             ("mode", net.name, "audit"), ("mode", net.name, "enforce")]
    for edit in edits:
        res = sh.secnet(*edit)
        assert res.returncode == 0, f"{edit}: {res.stderr}"
        fh.all_flowing(sink, streams, within=3)
    other = _run(run_container, net, "u9-db", "db")
    h.docker("rm", "-f", other.name)
    fh.all_flowing(sink, streams, within=3)


def test_mode_enforce_cuts_published_and_host_flows_audit_mode_let_through(
        make_network, run_container, flows):
    """api admits only 10.235.250.0/24 from outside; in audit mode the host's flows pass: TCP and
    UDP to the published ports over loopback (IPv4) and the gateway (IPv6), and TCP to api's
    own address. `secnet mode NET enforce` returning 0: all of them stop."""
    net = _network(make_network, "u9-ct-mode",
                   {"secnet.allow": "10.235.250.0/24->api:tcp/8080 10.235.250.0/24->api:udp/5353",
                    "secnet.mode": "audit"})
    tport = n.free_port(proto=("tcp",))
    uport = n.free_port(proto=("udp",))
    api = _run(run_container, net, "u9-api", "api", f"{tport}:8080", f"{uport}:5353/udp")
    gw6 = n.gateway(net, 6)
    sink = flows.sink(api, [("tcp", 8080), ("udp", 5353)])
    cut = {"lo4": ("tcp", "127.0.0.1", tport), "gw6": ("tcp", gw6, tport),
           "ulo4": ("udp", "127.0.0.1", uport), "ugw6": ("udp", gw6, uport),
           "dir4": ("tcp", api.ip, 8080), "dir6": ("tcp", api.ip6, 8080)}
    for tag, (proto, dst, port) in cut.items():
        flows.stream(n.HOST, tag, proto, dst, port, sport=44000 if proto == "udp" else 0)
    fh.all_flowing(sink, cut)
    res = sh.secnet("mode", net.name, "enforce")
    assert res.returncode == 0, res.stderr
    going = fh.still_going(sink, cut, watch=1.5)
    assert not going, f"host flows enforce mode denies went on: {going}"


@pytest.mark.parametrize("segment", ["api", ""], ids=["member", "quarantined"])
def test_a_replacement_behind_a_published_port_gets_the_stream_unless_quarantined(
        make_network, run_container, flows, segment):
    """The host streams UDP to a published port (loopback IPv4, gateway IPv6); the container
    behind it is replaced by one with the same -p. A member receives the stream's next
    datagrams; one whose label is empty (quarantined: "all its traffic, in and out, east-west
    and north-south, is dropped") must not."""
    net = _network(make_network, "u9-ct-pubq", None)
    port = n.free_port(proto=("udp",))
    old = _run(run_container, net, "u9-old", "api", f"{port}:5353/udp")
    gw6 = n.gateway(net, 6)
    sink = flows.sink(old, [("udp", 5353)])
    flows.stream(n.HOST, "u4", "udp", "127.0.0.1", port, sport=45000)
    flows.stream(n.HOST, "u6", "udp", gw6, port, sport=45000)
    fh.all_flowing(sink, ["u4", "u6"])
    h.docker("rm", "-f", old.name)
    new = _run(run_container, net, "u9-new", segment, f"{port}:5353/udp")
    sink = flows.sink(new, [("udp", 5353)])
    if segment:
        fh.all_flowing(sink, ["u4", "u6"])
        return
    time.sleep(3)
    got = {tag: sink.count(tag) for tag in ("u4", "u6") if sink.count(tag)}
    assert not got, f"the quarantined replacement received the published stream: {got}"


def test_reconnecting_a_member_as_another_segment_ends_its_udp_flows(make_network, run_container, flows):
    """web streams UDP to api (allowed, IPv4 and IPv6, fixed source port); api is disconnected and
    connected again with the same addresses as segment db (no rule from web): the stream stops."""
    net = _network(make_network, "u9-ct-recon", {"secnet.allow": "web->api:udp/5353"})
    a4, a6 = fh.host_in(net.subnet, 70), fh.host_in(net.subnet6, 0x70)
    api = _run(run_container, net, "u9-api", "api", ip=a4, ip6=a6)
    web = _run(run_container, net, "u9-web", "web")
    sink = flows.sink(api, [("udp", 5353)])
    flows.stream(web, "u4", "udp", a4, 5353, sport=46000)
    flows.stream(web, "u6", "udp", a6, 5353, sport=46000)
    fh.all_flowing(sink, ["u4", "u6"])
    h.docker("network", "disconnect", net.name, api.name)
    h.docker("network", "connect", "--driver-opt", "secnet.segment=db", "--ip", a4, "--ip6", a6,
             net.name, api.name)
    going = fh.still_going(sink, ("u4", "u6"), settle=1.0, watch=2.0)
    assert not going, f"web's UDP flows to api went on after api came back as db: {going}"
    assert sh.secnet("policy", net.name, "add", "web->db:udp/5353").returncode == 0
    fh.flowing(sink, "u4")      # the stream still runs: a rule for db lets it in again


def _streams_to_host(flows, web, prefix, gw4, gw6, tport, uport) -> tuple:
    """TCP and UDP streams from ``web`` to the host's gateway addresses, flowing; (sink, tags)."""
    sink = flows.sink(n.HOST, [("tcp", tport), ("udp", uport)])
    kinds = {f"{prefix}t4": ("tcp", gw4, tport), f"{prefix}t6": ("tcp", gw6, tport),
             f"{prefix}u4": ("udp", gw4, uport), f"{prefix}u6": ("udp", gw6, uport)}
    for tag, (proto, dst, port) in kinds.items():
        flows.stream(web, tag, proto, dst, port, sport=47000 if proto == "udp" else 0)
    fh.all_flowing(sink, kinds)
    return sink, kinds


def test_egress_flows_follow_the_cidr_rules_that_name_them(make_network, run_container, flows):
    """egress=allow: web's streams to the host (outside; TCP and UDP, IPv4 and IPv6) go on when a
    CIDR rule naming other addresses is added. egress=deny: streams that a CIDR rule naming the
    host allowed stop when `policy remove` of that rule returns."""
    net = _network(make_network, "u9-ct-eg", None)
    gw4, gw6 = n.gateway(net, 4), n.gateway(net, 6)
    web = _run(run_container, net, "u9-web", "web")
    tport, uport = n.free_port(proto=("tcp",)), n.free_port(proto=("udp",))
    sink, kinds = _streams_to_host(flows, web, "", gw4, gw6, tport, uport)
    res = sh.secnet("policy", net.name, "add", "web->10.235.250.0/24:tcp/443", "web->[fd00:235:0:fa::/64]:udp")
    assert res.returncode == 0, res.stderr
    fh.all_flowing(sink, kinds, within=3)
    flows.stop_all()
    # egress=deny: only the rules naming the host let the streams out
    deny = _network(make_network, "u9-ct-egd", {"secnet.egress": "deny"})
    gw4, gw6 = n.gateway(deny, 4), n.gateway(deny, 6)
    rules = [f"web->{gw}:{proto}" for gw in (gw4, f"[{gw6}]") for proto in ("tcp", "udp")]
    assert sh.secnet("policy", deny.name, "set", *rules).returncode == 0
    web = _run(run_container, deny, "u9-web2", "web")
    sink, kinds = _streams_to_host(flows, web, "d", gw4, gw6, tport, uport)
    res = sh.secnet("policy", deny.name, "remove", *rules)
    assert res.returncode == 0, res.stderr
    going = fh.still_going(sink, kinds, watch=1.5)
    assert not going, f"egress flows went on after the rules naming the host were removed: {going}"


def test_narrowing_a_rule_ends_exactly_the_flows_it_no_longer_covers(make_network, run_container, flows):
    """`web->api:any` narrowed by `policy set` to `web->api:tcp/8000-8085`: the TCP stream to 8090
    and the UDP streams stop; the TCP streams to 8080 (IPv4, IPv6) go on. Then `*->api:udp/5353`
    added: a new UDP stream from web passes again, and the TCP streams still go on."""
    net = _network(make_network, "u9-ct-narrow", {"secnet.allow": "web->api:any"})
    api = _run(run_container, net, "u9-api", "api")
    web = _run(run_container, net, "u9-web", "web")
    sink = flows.sink(api, [("tcp", 8080), ("tcp", 8090), ("udp", 5353)])
    kept = {"k4": ("tcp", api.ip, 8080), "k6": ("tcp", api.ip6, 8080)}
    cut = {"c90": ("tcp", api.ip, 8090), "cu4": ("udp", api.ip, 5353), "cu6": ("udp", api.ip6, 5353)}
    for tag, (proto, dst, port) in {**kept, **cut}.items():
        flows.stream(web, tag, proto, dst, port, sport=48000 if proto == "udp" else 0)
    fh.all_flowing(sink, {**kept, **cut})
    res = sh.secnet("policy", net.name, "set", "web->api:tcp/8000-8085")
    assert res.returncode == 0, res.stderr
    going = fh.still_going(sink, cut, watch=1.5)
    assert not going, f"flows the narrowed rule no longer covers went on: {going}"
    fh.all_flowing(sink, kept, within=3)
    assert sh.secnet("policy", net.name, "add", "*->api:udp/5353").returncode == 0
    flows.stream(web, "new", "udp", api.ip, 5353, sport=48001)
    fh.flowing(sink, "new")
    fh.all_flowing(sink, kept, within=3)
