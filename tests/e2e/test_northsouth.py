"""North-south traffic, end to end (published ports: test_published_ports.py):
ingress rules with a CIDR source, egress (masquerade, `secnet.egress`, CIDR
destinations), other Docker networks, and `--internal`.

Real packets between the host, an "outside host" (a network namespace behind
a veth pair: 10.201.0.2 / fd00:201::2, the host being 10.201.0.1 /
fd00:201::1 on that link) and containers of secnet networks in
10.222.0.0/16-10.223.0.0/16 and fd00:222::/48. Each reachability claim is a
TCP connection or UDP datagram answered by an echo server that names itself,
the source address it saw and its port.
"""
from __future__ import annotations

import json
import time

import pytest

import helpers as h
import ns_helpers as n
import seg_helpers as s
import vis_helpers as v
from ns_servers import CPORT, CUDP, OTHER, serve, servers, start  # noqa: F401  (servers: a fixture)
from outside_host import outside  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("backend")  # every test on every datapath

# --- 2. ingress rules with a CIDR source -------------------------------------------------------
def test_ingress_cidr_rules(make_network, run_container, servers, outside):
    ok_net = n.ns_network(make_network, "sn-ns-in", ipv6=True,
                          opts={"secnet.allow": f"{n.OUT_NET4}->web:tcp/{CPORT}"})
    other_net = n.ns_network(make_network, "sn-ns-in2", ipv6=True,
                             opts={"secnet.allow": f"10.202.0.0/24->web:tcp/{CPORT}"})
    base = n.free_port(count=4)
    web = start(run_container, servers, ok_net, "web", "web", [f"{base}:{CPORT}"], tcp=(CPORT, OTHER))
    api = start(run_container, servers, ok_net, "api", "api", [f"{base + 1}:{CPORT}"], tcp=(CPORT, OTHER))
    web2 = start(run_container, servers, other_net, "web2", "web", [f"{base + 2}:{CPORT}"])
    api2 = start(run_container, servers, other_net, "api2", "api", [f"{base + 3}:{CPORT}"])
    s.wait_segments(ok_net, {web.name: "web", api.name: "api"})
    s.wait_segments(other_net, {web2.name: "web", api2.name: "api"})
    o = outside.place

    # the rule names the outside: its flows get in, published or straight to the address
    n.reaches(o, n.HOST4, base, server=web.name)
    n.reaches(o, web.ip, CPORT, server=web.name)
    # a segment no CIDR rule names keeps Docker's behaviour: published ports are open ...
    n.reaches(o, n.HOST4, base + 1, server=api.name)
    n.reaches(o, n.HOST6, base + 1, server=api.name)
    n.reaches(o, n.HOST4, base + 3, server=api2.name)
    # the denials, side by side (two rounds, as n.blocked):
    results = n.blocked_each([
        (o, web.ip, OTHER, "tcp"),        # only what the rule names
        (o, api.ip, CPORT, "tcp"),        # api's address (Docker publishes ports, not containers)
        (o, n.HOST4, base + 2, "tcp"),    # a rule that names another CIDR leaves the outside out, silently
        (o, web2.ip, CPORT, "tcp"),
        (o, n.HOST6, base, "tcp"),        # the rule is IPv4: once the segment is named,
        (o, n.HOST6, base + 2, "tcp")])   # IPv6 from outside has no rule
    r = results[2]
    assert r.err == "timeout", f"ingress denied should be a drop, got {r.err}"


def test_hairpin_to_a_named_segment(make_network, run_container, servers, outside):
    net = n.ns_network(make_network, "sn-ns-hp", ipv6=False,
                       opts={"secnet.allow": f"{n.OUT_NET4}->web:tcp/{CPORT} api->web:tcp/{CPORT}"})
    port = n.free_port()
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    api = start(run_container, servers, net, "api", "api")
    admin = start(run_container, servers, net, "admin", "admin")
    s.wait_segments(net, {web.name: "web", api.name: "api", admin.name: "admin"})
    n.reaches(outside.place, n.HOST4, port, server=web.name)   # the rule for the outside
    n.reaches(api, web.ip, CPORT, server=web.name)               # the east-west rule
    n.reaches(api, n.HOST4, port, server=web.name, within=3)     # the same flow, through the host
    n.reaches(api, n.gateway(net, 4), port, server=web.name, within=3)   # and through the gateway
    # a segment with no rule to web gets in through neither (U12-F3): a hairpin is east-west
    # (one attempt each as before, side by side: three denied probes wait out one timeout)
    hairpins = (n.HOST4, n.gateway(net, 4))
    *through, direct = n.probe_each([(admin, dst, port, "tcp") for dst in hairpins]
                                    + [(admin, web.ip, CPORT, "tcp")])
    for dst, r in zip(hairpins, through):
        assert not r.ok, f"admin reached web's published port through {dst}: {r}"
    assert not direct.ok, "admin reached web directly"



def test_hairpin_is_east_west_through_any_host_address(make_network, run_container, servers, outside):
    """U12-F3, U12-F4: with `secnet.egress=deny` and no rule api->web, web's published
    port is reached by its own segment (intra) and not by api, through the gateway and
    another host address, IPv4 and IPv6, with one verdict on both backends; `explain`
    of api -> host:port says what the datapath does (denied, east-west, container port)."""
    net = n.ns_network(make_network, "sn-ns-hp2", ipv6=True, opts={"secnet.egress": "deny"})
    port = n.free_port()
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    web2 = start(run_container, servers, net, "web2", "web")
    api = start(run_container, servers, net, "api", "api")
    s.wait_segments(net, {web.name: "web", web2.name: "web", api.name: "api"})
    dsts = (n.HOST4, n.gateway(net, 4), n.HOST6, n.gateway(net, 6))
    for dst in dsts:
        n.reaches(web2, dst, port, server=web.name, within=3)      # within the segment: intra
    wrong = [f"api reached web through {dst}:{port}"   # one attempt each, side by side
             for dst, r in zip(dsts, n.probe_each([(api, dst, port, "tcp") for dst in dsts])) if r.ok]
    assert not wrong, "\n".join(wrong)
    for dst in (n.HOST4, n.gateway(net, 4)):
        res = s.secnet("explain", net.name, api.name, dst, f"tcp/{port}", "--json")
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        assert (got["allowed"], got["dst"].get("container"), got["port"]) == (False, web.name, CPORT), got
        assert got["dst"]["hairpin"] == {"address": dst, "port": port}, got
    s.secnet("policy", net.name, "add", f"api->web:tcp/{CPORT}", check=True)
    for dst in dsts:
        n.reaches(api, dst, port, server=web.name, within=3)       # the rule on the container port

# --- 3. egress --------------------------------------------------------------------------------
def test_egress_allowed_and_masqueraded(make_network, run_container, servers, outside):
    net = n.ns_network(make_network, "sn-ns-eg", ipv6=True)
    c = start(run_container, servers, net, "app", "app")
    s.wait_segments(net, {c.name: "app"})
    for dst, seen_as in ((n.OUT4, n.HOST4), (n.OUT6, n.HOST6)):
        for port, proto in ((443, "tcp"), (8443, "tcp"), (53, "udp")):
            r = n.reaches(c, dst, port, proto, server="outside")
            assert r.peer == n.addr(seen_as), f"{c.name} -> {dst}:{port}/{proto}: the outside saw " \
                                              f"{r.peer}, expected the host's {seen_as} (masquerade)"
    # the host's own address on the outside link: not forwarded, not masqueraded
    for dst, own in ((n.HOST4, c.ip), (n.HOST6, c.ip6)):
        for port, proto in ((n.HOST_TCP, "tcp"), (n.HOST_UDP, "udp")):
            r = n.reaches(c, dst, port, proto, server="host")
            assert r.peer == n.addr(own), f"the host saw {r.peer}, expected {own}"


def test_egress_deny_with_cidr_rules(make_network, run_container, servers, outside):
    rules = f"web->{n.OUT4}:tcp/443 web->[{n.OUT6}]:tcp/443"
    net = n.ns_network(make_network, "sn-ns-deny", ipv6=True,
                       opts={"secnet.egress": "deny", "secnet.allow": rules})
    port = n.free_port()
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    api = start(run_container, servers, net, "api", "api")
    s.wait_segments(net, {web.name: "web", api.name: "api"})

    for dst, seen_as in ((n.OUT4, n.HOST4), (n.OUT6, n.HOST6)):
        r = n.reaches(web, dst, 443, server="outside")
        assert r.peer == n.addr(seen_as)
    wrong = []
    logged = len(outside.server.seen())
    denied = [(web, n.OUT4, 8443, "tcp"), (web, n.OUT4, 53, "udp"), (web, n.OUT6, 8443, "tcp"),
              (web, n.OUT6, 53, "udp"), (api, n.OUT4, 443, "tcp"), (api, n.OUT6, 443, "tcp"),
              (api, n.OUT4, 53, "udp"),
              # the host's own addresses follow the same egress setting
              (web, n.HOST4, n.HOST_TCP, "tcp"), (web, n.HOST4, n.HOST_UDP, "udp"),
              (web, n.HOST6, n.HOST_TCP, "tcp"), (api, n.HOST4, n.HOST_TCP, "tcp"),
              (api, n.HOST6, n.HOST_UDP, "udp")]
    for (src, dst, p, proto), r in zip(denied, n.probe_each(denied)):   # side by side
        if r.ok or (proto == "tcp" and r.err != "timeout"):
            wrong.append(f"{src.name} -> {dst}:{p}/{proto}: {r} (expected a silent drop) "
                         f"[{n.tables_present(net)}]")
    assert not wrong, "egress=deny:\n" + "\n".join(wrong)
    leaked = [x for x in outside.server.seen()[logged:] if x[1] != "443"]
    assert not leaked, f"the outside got denied egress: {leaked}"

    # replies pass: the outside reaches web's published port, the host reaches both
    n.reaches(outside.place, n.HOST4, port, server=web.name)
    n.reaches(outside.place, n.HOST6, port, server=web.name)
    n.reaches(n.HOST, web.ip, CPORT, server=web.name)
    n.reaches(n.HOST, api.ip6, CPORT, server=api.name)


# --- 4. other Docker networks -----------------------------------------------------------------------
def _docker0() -> h.Network:
    info = json.loads(h.docker("network", "inspect", "bridge").stdout)[0]
    subnet = info["IPAM"]["Config"][0]["Subnet"]
    return h.Network(name="bridge", id=info["Id"], subnet=subnet, driver="bridge")


def test_other_networks_need_a_cidr_rule(make_network, run_container, servers, outside):
    bridge = _docker0()
    other = n.ns_network(make_network, "sn-ns-other", ipv6=True)
    rules = (f"{other.subnet}->web:tcp/{CPORT} [{other.subnet6}]->web:tcp/{CPORT} "
             f"{bridge.subnet}->web:tcp/{CPORT}")
    net = n.ns_network(make_network, "sn-ns-target", ipv6=True, opts={"secnet.allow": rules})
    web = start(run_container, servers, net, "web", "web", tcp=(CPORT, OTHER))
    api = start(run_container, servers, net, "api", "api", tcp=(CPORT, OTHER))
    b = start(run_container, servers, other, "b", "b")
    d = run_container(bridge, "d", cmd=n.SLEEP)
    s.wait_segments(net, {web.name: "web", api.name: "api"})
    s.wait_segments(other, {b.name: "b"})

    # the host reaches a segment no CIDR rule names by address (Docker behaviour); web is
    # named, and the host is outside like any other source: only the rules let it in
    n.reaches(n.HOST, api.ip, CPORT, server=api.name)
    n.blocked(n.HOST, web.ip, CPORT)
    # what the rules name (judged by the client's own address: the verdict comes before the
    # client network's masquerade, Docker's -s SUBNET ! -o BRIDGE or secnet's nat_post,
    # which then applies: the container sees the gateway; docs/deviations.md)
    seen = [n.reaches(b, web.ip, CPORT, server=web.name).peer, n.reaches(b, web.ip6, CPORT, server=web.name).peer,
            n.reaches(d, web.ip, CPORT, server=web.name).peer]
    print(f"\nother networks straight to a container, seen from: {seen}")
    assert seen == [n.gateway(net, 4), n.gateway(net, 6), n.gateway(net, 4)], seen
    # everything else from the other networks is dropped
    wrong = []
    dropped = [(b, api.ip, CPORT, "tcp"), (b, api.ip6, CPORT, "tcp"), (d, api.ip, CPORT, "tcp"),
               (b, web.ip, OTHER, "tcp"), (d, web.ip, OTHER, "tcp"), (b, api.ip, OTHER, "tcp")]
    for (src, dst, p, _proto), r in zip(dropped, n.probe_each(dropped)):   # side by side
        if r.ok or r.err != "timeout":
            wrong.append(f"{src.name} -> {dst}:{p}: {r} (expected a silent drop)")
    assert not wrong, "\n".join(wrong)


def test_other_networks_dropped_without_rules(make_network, run_container, servers, outside):
    bridge = _docker0()
    net = n.ns_network(make_network, "sn-ns-plain", ipv6=True)
    other = n.ns_network(make_network, "sn-ns-plain2", ipv6=True)
    port = n.free_port()
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    b = start(run_container, servers, other, "b", "b")
    d = run_container(bridge, "d", cmd=n.SLEEP)
    s.wait_segments(net, {web.name: "web"})
    s.wait_segments(other, {b.name: "b"})
    n.reaches(n.HOST, web.ip, CPORT, server=web.name)
    since = v.log_cursor()
    dropped = [(b, web.ip, CPORT, "tcp"), (b, web.ip6, CPORT, "tcp"), (d, web.ip, CPORT, "tcp")]
    for (src, dst, _p, _proto), r in zip(dropped, n.probe_each(dropped)):   # side by side
        assert not r.ok and r.err == "timeout", f"{src.name} -> {web.name} {dst}: {r}"
    # logged with the client's own address: not masqueraded (the drop comes first)
    time.sleep(1.0)
    entries = [e for e in v.log_since(net, since)["entries"] if e.get("dport") == CPORT]
    got = {(e["src"]["address"], e["src"]["outside"], e["dst"]["address"], e["reason"]) for e in entries}
    print(f"\nlogged: {got}")
    assert {(b.ip, True, web.ip, "no-rule"), (d.ip, True, web.ip, "no-rule")} <= got, entries
    # ... but its published port is public, as on Docker's bridge (the host's address)
    n.reaches(b, n.HOST4, port, server=web.name)
    n.reaches(d, n.HOST4, port, server=web.name)
    # the other way round, b's network drops web's flows to b's address the same way
    r = n.probe(web, b.ip, CPORT)
    assert not r.ok, f"{web.name} reached {b.name} on another secnet network: {r}"


# --- 5. internal networks --------------------------------------------------------------------------
def test_internal_network(make_network, run_container, servers, outside):
    net = n.ns_network(make_network, "sn-ns-int", ipv6=True, internal=True)
    port = n.free_port(count=2)
    name = h.unique("web")
    res = h.docker("run", "-d", "--name", name, "--network", net.name, "--label", "secnet.segment=web",
                   "-p", f"{port}:{CPORT}", "-p", f"{port + 1}:{CUDP}/udp", h.IMAGE, *n.SLEEP,
                   check=False)
    try:
        if res.returncode != 0:
            # refusing is fine, as long as the error says why
            assert "internal" in res.stderr and "publish" in res.stderr, res.stderr
            print(f"\n-p on an internal network: docker run fails: {res.stderr.strip()}")
            h.docker("rm", "-f", name, check=False)
            web = start(run_container, servers, net, "web", "web")
        else:
            print("\n-p on an internal network: docker run succeeds, nothing is published")
            web = h.inspect_container(name, net)
            serve(servers, web, tcp=(CPORT,), udp=(CUDP,))
        peer = start(run_container, servers, net, "peer", "web")
        s.wait_segments(net, {web.name: "web", peer.name: "web"})
        _check_internal(net, web, peer, port, outside)
    finally:
        h.docker("rm", "-f", name, check=False)


def _check_internal(net, web, peer, port, outside):
    # inside the network all is well
    n.reaches(peer, web.ip, CPORT, server=web.name)
    n.reaches(peer, web.ip6, CPORT, server=web.name)
    # no gateway
    assert not n.has_default_route(web, 4), h.in_netns(web, "ip", "route").stdout
    assert not n.has_default_route(web, 6), h.in_netns(web, "ip", "-6", "route").stdout
    # nothing published, nothing held
    assert n.pub_map(net, 4) == set() and n.pub_map(net, 6) == set()
    assert n.port_free(port, "tcp") and n.port_free(port + 1, "udp"), "a host port is held"
    o = outside.place
    wrong = []
    unreached = [(o, n.HOST4, port, "tcp"), (o, n.HOST6, port, "tcp"),
                 (o, n.HOST4, port + 1, "udp"), (n.HOST, "127.0.0.1", port, "tcp"),
                 (o, web.ip, CPORT, "tcp"), (o, web.ip6, CPORT, "tcp"),
                 (n.HOST, web.ip, CPORT, "tcp"), (n.HOST, web.ip6, CPORT, "tcp"),
                 (n.HOST, web.ip, CUDP, "udp")]
    for (where, dst, p, proto), r in zip(unreached, n.probe_each(unreached)):   # side by side
        if r.ok:
            wrong.append(f"{n.place_of(where).label} -> {dst}:{p}/{proto}: {r}")
    # even a container that routes around the missing gateway gets nothing out
    gw4, gw6 = n.gateway(net, 4), n.gateway(net, 6)
    h.run(["nsenter", f"--net={web.sandbox}", "ip", "route", "add", "default", "via", gw4])
    h.run(["nsenter", f"--net={web.sandbox}", "ip", "-6", "route", "add", "default", "via", gw6])
    seen_before = len(outside.server.seen()), len(outside.host_server.seen())
    out = [(web, n.OUT4, 443, "tcp"), (web, n.OUT6, 443, "tcp"), (web, n.OUT4, 53, "udp"),
           (web, n.OUT6, 53, "udp"), (web, n.HOST4, n.HOST_TCP, "tcp"), (web, n.HOST6, n.HOST_TCP, "tcp"),
           (web, n.HOST4, n.HOST_UDP, "udp")]
    for (_web, dst, p, proto), r in zip(out, n.probe_each(out)):   # side by side
        if r.ok:
            wrong.append(f"{web.name} -> {dst}:{p}/{proto}: {r}")
    leaked = outside.server.seen()[seen_before[0]:] + outside.host_server.seen()[seen_before[1]:]
    assert not wrong and not leaked, f"internal network leaks: {wrong} {leaked}"


def test_internal_refuses_cidr_rules(make_network):
    name = h.unique("sn-ns-intbad")
    res = h.docker(*h.network_create_args(name, n.pick4(), opts={"secnet.allow": "web->10.0.0.0/8"},
                                           internal=True), check=False)
    if res.returncode == 0:
        h.docker("network", "rm", name, check=False)
    assert res.returncode != 0, "an internal network accepted an egress CIDR rule"
    assert "secnet.allow" in res.stderr, f"the error does not name the option: {res.stderr.strip()}"
    assert h.docker("network", "inspect", name, check=False).returncode != 0
    print(f"\n--internal with a CIDR rule: {res.stderr.strip()}")
