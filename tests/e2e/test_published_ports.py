"""Published ports end to end (`docker run -p`): every form of -p, loopback
bindings for the host alone, a host port taken, and what a stop leaves behind.

Real packets between the host, an "outside host" (a network namespace behind
a veth pair: 10.201.0.2 / fd00:201::2, the host being 10.201.0.1 /
fd00:201::1 on that link) and containers of secnet networks in
10.222.0.0/16-10.223.0.0/16 and fd00:222::/48 (see ns_helpers).
"""
from __future__ import annotations

import pytest

import helpers as h
import ns_helpers as n
import seg_helpers as s
import vis_helpers as v
from ns_servers import CPORT, CUDP, RANGE, serve, servers, start  # noqa: F401  (servers: a fixture)
from outside_host import loopback_routed, outside  # noqa: F401  (outside: a fixture)

pytestmark = pytest.mark.usefixtures("backend")  # every test on every datapath


# --- 1. published ports ---------------------------------------------------------------------
def test_published_ports_every_form(make_network, run_container, servers, outside):
    """tcp, loopback-bound, udp and a range; from the host, the outside, a container of the
    network (hairpin: east-west, so only the publishing container's own segment gets in;
    another segment with no rule does not) and the publishing container itself; IPv4 and IPv6."""
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
        (peer, n.HOST4, tcp_p, "tcp", None, None),                # hairpin: east-west, no client->web rule
        (peer, n.HOST4, udp_p, "udp", None, None),
        (peer, gw4, tcp_p, "tcp", None, None),                    # the bridge's address is the host's too
        (web, n.HOST4, tcp_p, "tcp", CPORT, gw4),                 # its own published port: masqueraded
        (web, n.HOST4, udp_p, "udp", CUDP, gw4),
        # IPv6 on the dual-stack network
        (outside.place, n.HOST6, tcp_p, "tcp", CPORT, n.OUT6),
        (outside.place, n.HOST6, udp_p, "udp", CUDP, n.OUT6),
        (outside.place, n.HOST6, lo_p, "tcp", None, None),
        (n.HOST, n.HOST6, tcp_p, "tcp", CPORT, n.HOST6),
        (peer, n.HOST6, tcp_p, "tcp", None, None),
        (peer, gw6, tcp_p, "tcp", None, None),
        (web, n.HOST6, tcp_p, "tcp", CPORT, gw6),
    ]
    for hp, cp in zip(range_p, RANGE):
        cases += [(n.HOST, "127.0.0.1", hp, "tcp", cp, gw4), (n.HOST, n.HOST4, hp, "tcp", cp, n.HOST4),
                  (outside.place, n.HOST4, hp, "tcp", cp, n.OUT4), (outside.place, n.HOST6, hp, "tcp", cp, n.OUT6),
                  (peer, n.HOST4, hp, "tcp", None, None), (web, gw4, hp, "tcp", cp, gw4)]
    n.reaches(outside.place, n.HOST4, tcp_p, server=web.name)   # set-up done
    wrong = []
    firsts = n.probe_each([case[:4] for case in cases])   # side by side, each as n.probe
    for (where, dst, hp, proto, cport, seen_as), r in zip(cases, firsts):
        label = f"{n.place_of(where).label} -> {dst}:{hp}/{proto}"
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

    # nor does the published port open the container's own address to another segment
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
        results = n.probe_each([(outside.place, "127.0.0.1", p, proto)   # side by side
                                for p, proto in ((tcp_p, "tcp"), (udp_p, "udp"), (udp_p, "udp"))])
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
    since = v.log_cursor()
    with loopback_routed(app, "eth0", gw, app.ip), \
            n.counting(app, f'oifname "eth0" {to_lo}', hook="output") as left, \
            n.counting(n.HOST, f'iifname "{net.bridge}" {to_lo}') as sent, \
            n.counting(web, f"tcp dport {CPORT}") as got:
        results = n.probe_each([(app, "127.0.0.1", p, proto)   # side by side
                                for p, proto in ((lo_tcp, "tcp"), (lo_udp, "udp"), (lo_udp, "udp"),
                                                 (pub_p, "tcp"))])
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
    # `secnet log` says what was sent and why, the same on both backends (U12-F5 c)
    entry, _ = v.wait_entry(net, since, lambda e: e["src"].get("address") == app.ip and e.get("dport") == pub_p)
    assert (entry["reason"], entry["why"], entry["dst"]["address"], entry["dst"]["outside"]) == (
        "loopback", "to the host's loopback (never reachable from a container)", "127.0.0.1", True), entry


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
    with n.refused_publish(net, f"[::1]:{port}:{CPORT}", "lo6") as res:
        assert res.returncode != 0, f"-p [::1]:{port} was accepted (pub6: {n.pub_map(net, 6)})"
        assert "::1" in res.stderr, f"the error does not name [::1]: {res.stderr.strip()}"
        print(f"\n-p [::1]:...: {res.stderr.strip()}")
        assert n.pub_map(net, 6) == set() and n.port_free(port, "tcp", "::1")


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
    after_stop = n.probe_each([(outside.place, n.HOST4, hp, proto) for hp, proto, _a in held])
    assert not [r for r in after_stop if r.ok], [str(r) for r in after_stop]

    # started again, it publishes again (nothing stale in the way)
    h.docker("start", web.name)
    web = h.inspect_container(web.name, net)
    serve(servers, web, tcp=(CPORT,))
    n.reaches(outside.place, n.HOST4, tcp_p, server=web.name)
