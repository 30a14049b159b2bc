"""Conntrack entries never outlive what they described (issue 10, kind 1).

Flows that were going on before a change: a UDP stream to a published port
whose container is replaced, published (DNAT'd, IPv4 and IPv6), hairpin and
east-west flows that a policy edit no longer allows, a container that takes
a removed one's address. Real engine, real packets; each stream is one flow
(one TCP connection, or one fixed UDP source port).
"""
from __future__ import annotations

import pytest

import flow_helpers as fh
import helpers as h
import ns_helpers as n
import seg_helpers as sh

SEG = "secnet.segment"



def publish(run_container, net, name, segment, *ports, ip=None, ip6=None):
    extra = [a for p in ports for a in ("-p", p)] + (["--ip", ip] if ip else []) + \
        (["--ip6", ip6] if ip6 else [])
    return run_container(net, name, labels={SEG: segment} if segment else None, cmd=n.SLEEP, extra=extra)


def test_a_udp_stream_to_a_published_port_reaches_the_container_that_replaces_the_old_one(
        make_network, run_container, flows):
    """`docker rm -f` the container behind -p P:5353/udp, start another with the same -p: the
    stream's next datagrams (same source port, IPv4 and IPv6) reach the new one."""
    net = fh.network(make_network, "sn-flow-udp")
    port = n.free_port(proto=("udp",))
    sport = n.free_port(19000, 19900, proto=("udp",))
    old = publish(run_container, net, "old", None, f"{port}:5353/udp",
                  ip=fh.host_in(net.subnet, 50), ip6=fh.host_in(net.subnet6, 0x50))
    gw6 = n.gateway(net, 6)
    sink = flows.sink(old, [("udp", 5353)])
    flows.stream(n.HOST, "u4", "udp", "127.0.0.1", port, sport=sport)
    flows.stream(n.HOST, "u6", "udp", gw6, port, sport=sport)
    fh.all_flowing(sink, ["u4", "u6"])
    h.docker("rm", "-f", old.name)
    new = publish(run_container, net, "new", None, f"{port}:5353/udp",       # a new address
                  ip=fh.host_in(net.subnet, 51), ip6=fh.host_in(net.subnet6, 0x51))
    sink = flows.sink(new, [("udp", 5353)])
    fh.all_flowing(sink, ["u4", "u6"], within=5)


def test_policy_set_cuts_published_hairpin_and_east_west_flows_it_no_longer_allows(
        make_network, run_container, flows):
    """A CIDR-source rule that names the segment but not the host: the host's flows to the
    published port (IPv4, IPv6) stop when `secnet policy set` returns 0; so do a hairpin and an
    east-west flow from web. A flow the new rules still allow goes on."""
    net = fh.network(make_network, "sn-flow-pol",
                     opts={"secnet.allow": "web->api:tcp/8080 mon->api:tcp/8080"})
    port = n.free_port(proto=("tcp",))
    api = publish(run_container, net, "api", "api", f"{port}:8080")
    web = publish(run_container, net, "web", "web")
    mon = publish(run_container, net, "mon", "mon")
    gw4, gw6 = n.gateway(net, 4), n.gateway(net, 6)
    sink = flows.sink(api, [("tcp", 8080)])
    cut = {"pub4": (n.HOST, "127.0.0.1", port), "pub6": (n.HOST, gw6, port),
           "hair": (web, gw4, port), "ew": (web, api.ip, 8080), "ew6": (web, api.ip6, 8080)}
    for tag, (where, dst, p) in cut.items():
        flows.stream(where, tag, "tcp", dst, p)
    flows.stream(mon, "kept", "tcp", api.ip, 8080)
    fh.all_flowing(sink, list(cut) + ["kept"])
    res = sh.secnet("policy", net.name, "set", "mon->api:tcp/8080", "10.201.0.0/24->api:tcp/8080")
    assert res.returncode == 0, res.stderr
    going = fh.still_going(sink, cut, watch=1.0)
    assert not going, f"flows the new rules do not allow went on: {going}"
    fh.flowing(sink, "kept")


def test_a_container_that_takes_a_removed_ones_address_gets_none_of_its_flows(
        make_network, run_container, flows):
    """web streams UDP to api (allowed); api is removed and a container of a segment web may
    not reach takes its address: the stream's datagrams do not reach it."""
    net = fh.network(make_network, "sn-flow-addr", opts={"secnet.allow": "web->api:udp/5353"})
    addr = fh.host_in(net.subnet, 77)
    api = publish(run_container, net, "api", "api", ip=addr)
    web = publish(run_container, net, "web", "web")
    sink = flows.sink(api, [("udp", 5353)])
    flows.stream(web, "w", "udp", addr, 5353, sport=41000)
    fh.flowing(sink, "w")
    h.docker("rm", "-f", api.name)
    db = publish(run_container, net, "db", "db", ip=addr)
    sink = flows.sink(db, [("udp", 5353)])
    assert fh.stopped(sink, "w", settle=0.2, watch=2.0), "the stream reached the address's new holder"
