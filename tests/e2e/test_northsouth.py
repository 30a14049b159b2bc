"""North-south traffic, end to end: published ports (`docker run -p`), ingress
rules with a CIDR source, egress (masquerade, `secnet.egress`, CIDR
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

import pytest

import helpers as h
import ns_helpers as n
import seg_helpers as s
from ns_servers import Server, servers  # noqa: F401  (servers: a fixture)
from outside_host import loopback_routed, outside  # noqa: F401  (outside: a fixture)

pytestmark = pytest.mark.usefixtures("backend")  # every test on every datapath

CPORT = 8080                       # the containers' TCP service
CUDP = 5353                        # ... and their UDP one
RANGE = (8100, 8101, 8102)         # container ports of a published range
OTHER = 9090                       # a TCP port no rule names


def serve(servers, c: h.Container, tcp=(CPORT,), udp=()) -> Server:
    return servers.start(c, tcp=tcp, udp=udp)


def start(run_container, servers, net, name, segment=None, publish=(), tcp=(CPORT,), udp=()):
    """A container (sleep) with the echo server in its netns; ``publish``: -p values."""
    extra = [a for p in publish for a in ("-p", p)]
    labels = {"secnet.segment": segment} if segment else None
    c = run_container(net, name, labels=labels, cmd=n.SLEEP, extra=extra)
    serve(servers, c, tcp=tcp, udp=udp)
    return c


# --- 1. published ports ---------------------------------------------------------------------
def test_published_ports_every_form(make_network, run_container, servers, outside):
    """tcp, loopback-bound, udp and a range; from the host, the outside, a container of the
    network (hairpin) and the publishing container itself; IPv4 and IPv6."""
    net = n.ns_network(make_network, "sn-ns-pub", ipv6=True)
    base = n.free_port(count=6)
    tcp_p, lo_p, udp_p = base, base + 1, base + 2
    range_p = (base + 3, base + 4, base + 5)
    publish = [f"{tcp_p}:{CPORT}", f"127.0.0.1:{lo_p}:{CPORT}", f"{udp_p}:{CUDP}/udp",
               f"{range_p[0]}-{range_p[-1]}:{RANGE[0]}-{RANGE[-1]}"]
    web = start(run_container, servers, net, "web", "web", publish, tcp=(CPORT, *RANGE), udp=(CUDP,))
    peer = start(run_container, servers, net, "peer", "client")
    s.wait_segments(net, {web.name: "web", peer.name: "client"})

    # what Docker handed to the driver ended up in the map, one element per host port
    v4 = n.pub_map(net, 4)
    want4 = {("0.0.0.0/0", "tcp", tcp_p, web.ip, CPORT), ("127.0.0.1", "tcp", lo_p, web.ip, CPORT),
             ("0.0.0.0/0", "udp", udp_p, web.ip, CUDP)}
    want4 |= {("0.0.0.0/0", "tcp", hp, web.ip, cp) for hp, cp in zip(range_p, RANGE)}
    assert v4 == want4, f"pub4 map: {sorted(v4)}"
    v6 = n.pub_map(net, 6)
    assert {(k, p, hp) for k, p, hp, _a, _c in v6} == \
        {("::/0", "tcp", tcp_p), ("::/0", "udp", udp_p)} | {("::/0", "tcp", hp) for hp in range_p}, \
        f"pub6 map: {sorted(v6)}"
    assert {a for *_x, a, _c in v6} == {web.ip6}

    gw4, gw6 = n.gateway(net, 4), n.gateway(net, 6)
    # (where from, address, host port, proto, expected container port or None, expected peer)
    cases = [
        (n.HOST, "127.0.0.1", tcp_p, "tcp", CPORT, gw4),          # loopback: masqueraded to the bridge
        (n.HOST, "127.0.0.1", lo_p, "tcp", CPORT, gw4),
        (n.HOST, "127.0.0.1", udp_p, "udp", CUDP, gw4),
        (n.HOST, n.HOST4, tcp_p, "tcp", CPORT, n.HOST4),
        (n.HOST, n.HOST4, udp_p, "udp", CUDP, n.HOST4),
        (n.HOST, n.HOST4, lo_p, "tcp", None, None),               # bound to 127.0.0.1 only
        (outside.place, n.HOST4, tcp_p, "tcp", CPORT, n.OUT4),    # the outside keeps its address
        (outside.place, n.HOST4, udp_p, "udp", CUDP, n.OUT4),
        (outside.place, n.HOST4, lo_p, "tcp", None, None),
        (peer, n.HOST4, tcp_p, "tcp", CPORT, gw4),                # hairpin: masqueraded
        (peer, n.HOST4, udp_p, "udp", CUDP, gw4),
        (peer, gw4, tcp_p, "tcp", CPORT, gw4),                    # the bridge's address is the host's too
        (web, n.HOST4, tcp_p, "tcp", CPORT, gw4),                 # its own published port
        (web, n.HOST4, udp_p, "udp", CUDP, gw4),
        # IPv6 on the dual-stack network
        (outside.place, n.HOST6, tcp_p, "tcp", CPORT, n.OUT6),
        (outside.place, n.HOST6, udp_p, "udp", CUDP, n.OUT6),
        (outside.place, n.HOST6, lo_p, "tcp", None, None),
        (n.HOST, n.HOST6, tcp_p, "tcp", CPORT, n.HOST6),
        (peer, n.HOST6, tcp_p, "tcp", CPORT, gw6),
        (web, n.HOST6, tcp_p, "tcp", CPORT, gw6),
    ]
    for hp, cp in zip(range_p, RANGE):
        cases += [(n.HOST, "127.0.0.1", hp, "tcp", cp, gw4), (n.HOST, n.HOST4, hp, "tcp", cp, n.HOST4),
                  (outside.place, n.HOST4, hp, "tcp", cp, n.OUT4), (outside.place, n.HOST6, hp, "tcp", cp, n.OUT6),
                  (peer, n.HOST4, hp, "tcp", cp, gw4)]
    n.reaches(outside.place, n.HOST4, tcp_p, server=web.name)   # set-up done
    wrong = []
    for where, dst, hp, proto, cport, seen_as in cases:
        label = f"{n.place_of(where).label} -> {dst}:{hp}/{proto}"
        r = n.probe(where, dst, hp, proto)
        if cport is None:
            if r.ok:
                wrong.append(f"{label}: reached ({r}), expected nothing")
            continue
        if not r.ok:
            r = n.probe(where, dst, hp, proto, timeout=3)  # once more, patiently
        if not r.ok:
            wrong.append(f"{label}: {r}")
        elif (r.server, r.port, r.peer) != (web.name, cport, n.addr(seen_as)):
            wrong.append(f"{label}: answered {r.reply!r}, expected {web.name} on {cport} seeing {seen_as}")
    assert not wrong, "published ports:\n" + "\n".join(wrong)

    # [::1] is not published (IPv6 has no route_localnet; Docker's bridge serves it with its
    # userland proxy): the host gets a refusal at once, not a black hole
    r = n.probe(n.HOST, "::1", tcp_p, timeout=3)
    assert r.err == "refused", f"host -> [::1]:{tcp_p}: {r} (expected a refusal)"

    # the hairpin does not open the container's own address to another segment
    assert not n.probe(peer, web.ip, CPORT).ok, "client reached web directly: no rule allows that"


def test_loopback_binding_not_reachable_from_the_link(make_network, run_container, servers, outside):
    """`-p 127.0.0.1:P:...` is for the host alone: a neighbour on the link that sends to
    127.0.0.1:P (routing 127.0.0.1 to the host) must not get a packet to the container."""
    net = n.ns_network(make_network, "sn-ns-lo", ipv6=False)
    tcp_p = n.free_port(count=2)
    udp_p = tcp_p + 1
    web = start(run_container, servers, net, "web", "web",
                [f"127.0.0.1:{tcp_p}:{CPORT}", f"127.0.0.1:{udp_p}:{CUDP}/udp"], udp=(CUDP,))
    web_server = servers.all[-1]
    s.wait_segments(net, {web.name: "web"})
    n.reaches(n.HOST, "127.0.0.1", tcp_p, server=web.name)
    n.reaches(n.HOST, "127.0.0.1", udp_p, "udp", server=web.name)
    sent_match = f'iifname "{outside.veth_host}" ip daddr 127.0.0.1 meta l4proto {{ tcp, udp }}'
    with outside.loopback_routed_to_host(), n.counting(n.HOST, sent_match) as sent, \
            n.counting(web, f"ip saddr {n.OUT4}") as got:
        results = [n.probe(outside.place, "127.0.0.1", p, proto)
                   for p, proto in ((tcp_p, "tcp"), (udp_p, "udp"), (udp_p, "udp"))]
        arrived, delivered = sent(), got()
    seen = [x for x in web_server.seen() if x[2] == n.OUT4]
    # the probe is real: its packets reached the host
    assert arrived >= 3, f"{arrived} packets to 127.0.0.1 arrived from the link: the probe proves nothing"
    assert delivered == 0 and not seen and not any(r.ok for r in results), \
        (f"the link reached the container through 127.0.0.1 ({delivered} packets from {n.OUT4} "
         f"in the container; its servers saw {seen}; {[str(r) for r in results]})")


def test_host_loopback_not_reachable_from_containers(make_network, run_container, servers, outside,
                                                     backend):
    """The bridge has route_localnet (for the host's 127.0.0.1:PORT): a container that routes
    127.0.0.1 to its gateway must still reach neither the host's loopback services nor a
    loopback-published port of another container."""
    net = n.ns_network(make_network, "sn-ns-lo2", ipv6=False)
    base = n.free_port(count=3)
    lo_tcp, lo_udp, pub_p = base, base + 1, base + 2
    servers.start(n.HOST, "host-lo", tcp=(lo_tcp,), udp=(lo_udp,), binds=[[4, "127.0.0.1"]])
    host_lo = servers.all[-1]
    web = start(run_container, servers, net, "web", "web", [f"127.0.0.1:{pub_p}:{CPORT}"])
    app = start(run_container, servers, net, "app", "app")
    s.wait_segments(net, {web.name: "web", app.name: "app"})
    gw = n.gateway(net, 4)
    n.reaches(n.HOST, "127.0.0.1", lo_tcp, server="host-lo")
    n.reaches(n.HOST, "127.0.0.1", pub_p, server=web.name)
    n.reaches(app, n.HOST4, n.HOST_TCP, server="host")    # egress to the host is allowed
    to_lo = "ip daddr 127.0.0.1 meta l4proto { tcp, udp }"
    with loopback_routed(app, "eth0", gw, app.ip), \
            n.counting(app, f'oifname "eth0" {to_lo}', hook="output") as left, \
            n.counting(n.HOST, f'iifname "{net.bridge}" {to_lo}') as sent, \
            n.counting(web, f"tcp dport {CPORT}") as got:
        results = [n.probe(app, "127.0.0.1", p, proto)
                   for p, proto in ((lo_tcp, "tcp"), (lo_udp, "udp"), (lo_udp, "udp"), (pub_p, "tcp"))]
        departed, arrived, delivered = left(), sent(), got()
    seen = [x for x in host_lo.seen() if x[2] != "127.0.0.1"]
    assert departed >= 4, f"{departed} packets to 127.0.0.1 left the container: the probe proves nothing"
    if backend == "nftables":   # dropped in the host's input hook (host_in), after the bridge
        assert arrived >= 4, f"{arrived} packets to 127.0.0.1 arrived from the bridge: the probe proves nothing"
    else:                       # dropped on the container's veth (docs/ebpf.md), before the bridge
        assert arrived == 0, f"{arrived} packets to 127.0.0.1 got past the container's veth to the bridge"
    assert not seen and delivered == 0 and not any(r.ok for r in results), \
        (f"a container reached 127.0.0.1 of the host: the host's loopback server saw {seen}, "
         f"web got {delivered} packets; {[str(r) for r in results]}")


def test_host_port_taken(make_network, run_container, servers, outside):
    """A host port that something holds cannot be published: docker run fails naming it,
    and the failed run leaves nothing in the datapath."""
    net = n.ns_network(make_network, "sn-ns-busy", ipv6=True)
    busy = n.free_port(count=2)
    dup = busy + 1
    failed = []
    with n.hold_port(busy):
        name = h.unique("busy")
        failed.append(name)
        res = n.docker_run_fails("--name", name, "--network", net.name, "-p", f"{busy}:{CPORT}",
                                 h.IMAGE, *n.SLEEP)
        assert res.returncode != 0, f"docker run -p {busy} succeeded while the port is held"
        assert str(busy) in res.stderr, f"the error does not name port {busy}: {res.stderr.strip()}"
        print(f"\nport held by another program: {res.stderr.strip()}")
    assert n.pub_map(net, 4) == set() and n.pub_map(net, 6) == set()

    first = start(run_container, servers, net, "first", "web", [f"{dup}:{CPORT}"])
    name2 = h.unique("second")
    failed.append(name2)
    res = n.docker_run_fails("--name", name2, "--network", net.name, "--label", "secnet.segment=web",
                             "-p", f"{dup}:{CPORT}", h.IMAGE, *n.SLEEP)
    try:
        assert res.returncode != 0, f"publishing host port {dup} twice succeeded"
        assert str(dup) in res.stderr, f"the error does not name port {dup}: {res.stderr.strip()}"
        print(f"port published twice: {res.stderr.strip()}")
        # the first container keeps its port, and only it is in the map
        s.wait_segments(net, {first.name: "web"})
        n.reaches(outside.place, n.HOST4, dup, server=first.name)
        assert {(hp, a) for _k, _p, hp, a, _c in n.pub_map(net, 4)} == {(dup, first.ip)}
    finally:
        h.docker("rm", "-f", *failed, check=False)

    # a range of host ports for one container port: the first free one of the range is used
    rng = n.free_port(count=3)
    with n.hold_port(rng):
        third = start(run_container, servers, net, "third", "web", [f"{rng}-{rng + 2}:{CPORT}"])
    s.wait_segments(net, {third.name: "web"})
    assert {hp for _k, _p, hp, a, _c in n.pub_map(net, 4) if a == third.ip} == {rng + 1}
    n.reaches(outside.place, n.HOST4, rng + 1, server=third.name)
    assert not n.probe(outside.place, n.HOST4, rng + 2).ok


def test_ipv6_loopback_publish_is_refused(make_network):
    """[::1] cannot be DNAT'd to a container (no route_localnet in IPv6): `-p [::1]:P:...` must
    fail clearly rather than publish a black hole."""
    net = n.ns_network(make_network, "sn-ns-lo6", ipv6=True)
    port = n.free_port()
    name = h.unique("lo6")
    try:
        res = n.docker_run_fails("--name", name, "--network", net.name, "-p", f"[::1]:{port}:{CPORT}",
                                 h.IMAGE, *n.SLEEP)
        assert res.returncode != 0, f"-p [::1]:{port} was accepted (pub6: {n.pub_map(net, 6)})"
        assert "::1" in res.stderr, f"the error does not name [::1]: {res.stderr.strip()}"
        print(f"\n-p [::1]:...: {res.stderr.strip()}")
        assert n.pub_map(net, 6) == set() and n.port_free(port, "tcp", "::1")
    finally:
        h.docker("rm", "-f", name, check=False)


def test_stop_removes_every_trace(make_network, run_container, servers, outside):
    net = n.ns_network(make_network, "sn-ns-stop", ipv6=True)
    base = n.free_port(count=5)
    tcp_p, lo_p, udp_p, r0, r1 = range(base, base + 5)
    web = start(run_container, servers, net, "web", "web",
                [f"{tcp_p}:{CPORT}", f"127.0.0.1:{lo_p}:{CPORT}", f"{udp_p}:{CUDP}/udp",
                 f"{r0}-{r1}:{RANGE[0]}-{RANGE[1]}"], tcp=(CPORT, *RANGE), udp=(CUDP,))
    s.wait_segments(net, {web.name: "web"})
    n.reaches(outside.place, n.HOST4, tcp_p, server=web.name)
    n.reaches(outside.place, n.HOST4, udp_p, "udp", server=web.name)
    held = [(tcp_p, "tcp", ""), (lo_p, "tcp", "127.0.0.1"), (udp_p, "udp", ""), (r0, "tcp", ""),
            (r1, "tcp", "")]
    assert not [x for x in held if n.port_free(*x)], "a published host port is not held"
    assert len(n.pub_map(net, 4)) == 5 and len(n.pub_map(net, 6)) == 4

    servers.stop_all()
    h.docker("stop", "-t", "1", web.name)
    assert n.pub_map(net, 4) == set(), f"pub4 keeps elements after stop: {n.pub_map(net, 4)}"
    assert n.pub_map(net, 6) == set(), f"pub6 keeps elements after stop: {n.pub_map(net, 6)}"
    still = [x for x in held if not n.port_free(*x)]
    assert not still, f"host ports still held after stop: {still}"
    for hp, proto, _a in held:
        assert not n.probe(outside.place, n.HOST4, hp, proto).ok

    # started again, it publishes again (nothing stale in the way)
    h.docker("start", web.name)
    web = h.inspect_container(web.name, net)
    serve(servers, web, tcp=(CPORT,))
    n.reaches(outside.place, n.HOST4, tcp_p, server=web.name)


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
    n.blocked(o, web.ip, OTHER)                          # only what the rule names
    # a segment no CIDR rule names keeps Docker's behaviour: published ports are open ...
    n.reaches(o, n.HOST4, base + 1, server=api.name)
    n.reaches(o, n.HOST6, base + 1, server=api.name)
    n.reaches(o, n.HOST4, base + 3, server=api2.name)
    # ... and its address is not (Docker publishes ports, not containers)
    n.blocked(o, api.ip, CPORT)
    # a rule that names another CIDR leaves the outside out, silently
    r = n.blocked(o, n.HOST4, base + 2)
    assert r.err == "timeout", f"ingress denied should be a drop, got {r.err}"
    n.blocked(o, web2.ip, CPORT)
    # the rule is IPv4: once the segment is named, IPv6 from outside has no rule
    n.blocked(o, n.HOST6, base)
    n.blocked(o, n.HOST6, base + 2)


def test_hairpin_to_a_named_segment(make_network, run_container, servers, outside):
    net = n.ns_network(make_network, "sn-ns-hp", ipv6=False,
                       opts={"secnet.allow": f"{n.OUT_NET4}->web:tcp/{CPORT} api->web:tcp/{CPORT}"})
    port = n.free_port()
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    api = start(run_container, servers, net, "api", "api")
    s.wait_segments(net, {web.name: "web", api.name: "api"})
    n.reaches(outside.place, n.HOST4, port, server=web.name)   # the rule for the outside
    n.reaches(api, web.ip, CPORT, server=web.name)               # the east-west rule
    n.reaches(api, n.HOST4, port, server=web.name, within=3)     # the same flow, through the host


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
    for src, dst, p, proto in denied:
        r = n.probe(src, dst, p, proto)
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
    # what the rules name
    n.reaches(b, web.ip, CPORT, server=web.name)
    n.reaches(b, web.ip6, CPORT, server=web.name)
    n.reaches(d, web.ip, CPORT, server=web.name)
    # everything else from the other networks is dropped
    wrong = []
    for src, dst, p in ((b, api.ip, CPORT), (b, api.ip6, CPORT), (d, api.ip, CPORT),
                        (b, web.ip, OTHER), (d, web.ip, OTHER), (b, api.ip, OTHER)):
        r = n.probe(src, dst, p)
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
    for src, dst in ((b, web.ip), (b, web.ip6), (d, web.ip)):
        r = n.probe(src, dst, CPORT)
        assert not r.ok and r.err == "timeout", f"{src.name} -> {web.name} {dst}: {r}"
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
            print(f"\n-p on an internal network: docker run succeeds, nothing is published")
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
    for where, dst, p, proto in ((o, n.HOST4, port, "tcp"), (o, n.HOST6, port, "tcp"),
                                 (o, n.HOST4, port + 1, "udp"), (n.HOST, "127.0.0.1", port, "tcp"),
                                 (o, web.ip, CPORT, "tcp"), (o, web.ip6, CPORT, "tcp"),
                                 (n.HOST, web.ip, CPORT, "tcp"), (n.HOST, web.ip6, CPORT, "tcp"),
                                 (n.HOST, web.ip, CUDP, "udp")):
        r = n.probe(where, dst, p, proto)
        if r.ok:
            wrong.append(f"{n.place_of(where).label} -> {dst}:{p}/{proto}: {r}")
    # even a container that routes around the missing gateway gets nothing out
    gw4, gw6 = n.gateway(net, 4), n.gateway(net, 6)
    h.run(["nsenter", f"--net={web.sandbox}", "ip", "route", "add", "default", "via", gw4])
    h.run(["nsenter", f"--net={web.sandbox}", "ip", "-6", "route", "add", "default", "via", gw6])
    seen_before = len(outside.server.seen()), len(outside.host_server.seen())
    for dst, p, proto in ((n.OUT4, 443, "tcp"), (n.OUT6, 443, "tcp"), (n.OUT4, 53, "udp"),
                          (n.OUT6, 53, "udp"), (n.HOST4, n.HOST_TCP, "tcp"), (n.HOST6, n.HOST_TCP, "tcp"),
                          (n.HOST4, n.HOST_UDP, "udp")):
        r = n.probe(web, dst, p, proto)
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
