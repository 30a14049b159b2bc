"""What Docker's IPAM hands the driver (issue 10, kind 3): several IPv4 and
IPv6 subnets, --gateway, --ip-range, --aux-address, --ipv6 with only an
IPv6 subnet. Each container gets the gateway of its own subnet, segments
span every subnet, and north-south (masquerade, published ports) covers
every subnet. Real engine, real packets.
"""
from __future__ import annotations

import ipaddress
import json
import random

import pytest

import helpers as h
import ns_helpers as n
from ns_servers import servers  # noqa: F401  (fixture)
from outside_host import outside  # noqa: F401  (fixture)

SEG = "secnet.segment"


@pytest.fixture
def network_with():
    """network_with(*docker network create flags) -> Network; removed afterwards."""
    made = []

    def create(*flags) -> h.Network:
        for _ in range(20):
            name = h.unique("sn-ipam")
            subs4 = [f"10.233.{random.randint(0, 255)}.0/24" for _ in range(2)]
            subs6 = [f"fd00:233:{random.randint(0, 0xffff):x}::/64" for _ in range(2)]
            base = subs4[0][:-len("0/24")]
            keys = {"s4a": subs4[0], "s4b": subs4[1], "s6a": subs6[0], "s6b": subs6[1],
                    "gw4": base + "254", "range4": base + "128/25", "aux4": base + "129"}
            args = [a.format(**keys) for a in flags]
            res = h.docker("network", "create", "-d", "secnet", *args, name, check=False)
            if res.returncode == 0:
                net = h.Network(name=name, id=res.stdout.strip(), subnet=subs4[0], subnet6=subs6[0])
                net.subnets = subs4 + subs6
                made.append(net)
                return net
            if "overlap" not in res.stderr:
                raise h.CommandFailed(f"docker network create {' '.join(args)}: {res.stderr.strip()}")
        raise AssertionError("no free subnets in 10.233.0.0/16")

    yield create
    for net in reversed(made):
        h.remove_network(net)


def default_via(c: h.Container, family: int) -> str:
    routes = json.loads(h.in_netns(c, "ip", "-j", f"-{family}", "route", "show", "default").stdout or "[]")
    return routes[0].get("gateway", "") if routes else ""


def at(subnet: str, index: int) -> str:
    return str(ipaddress.ip_network(subnet)[index])


def start(run_container, servers, net, name, segment, *extra):  # noqa: F811
    c = run_container(net, name, labels={SEG: segment}, cmd=n.SLEEP, extra=list(extra))
    servers.start(c, tcp=(8080,), udp=(5353,))
    return c


def test_several_subnets_each_container_gets_its_own_subnets_gateway(
        network_with, run_container, servers, outside):  # noqa: F811
    """The issue's example (--subnet twice, --ip in the second one) and what must hold then:
    segments span both subnets, both are masqueraded to the outside, ports publish from both."""
    net = network_with("--subnet", "{s4a}", "--subnet", "{s4b}", "-o", "secnet.allow=web->api:tcp/8080")
    s4a, s4b = net.subnets[0], net.subnets[1]
    port = n.free_port(proto=("tcp",))
    api = start(run_container, servers, net, "api", "api", "--ip", at(s4b, 10), "-p", f"{port}:8080")
    web = start(run_container, servers, net, "web", "web", "--ip", at(s4a, 10))
    db = start(run_container, servers, net, "db", "db", "--ip", at(s4b, 11))
    assert default_via(api, 4) == at(s4b, 1) and default_via(web, 4) == at(s4a, 1)
    n.reaches(web, api.ip, 8080, server=api.name)              # across the two subnets, allowed
    n.blocked_each([(db, api.ip, 8080, "tcp"),                  # same subnet, no rule
                    (api, web.ip, 8080, "tcp")])                # side by side
    for c in (api, web):                                        # both subnets are masqueraded
        r = n.reaches(c, n.OUT4, 443)
        assert r.peer == n.HOST4, f"{c.name} reached the outside as {r.peer}, not masqueraded"
    n.reaches(n.HOST, "127.0.0.1", port, server=api.name)       # published from the second subnet
    n.reaches(outside.place, n.HOST4, port, server=api.name)


def test_gateway_ip_range_aux_address_and_several_ipv6_subnets(
        network_with, run_container, servers):  # noqa: F811
    net = network_with("--subnet", "{s4a}", "--gateway", "{gw4}", "--ip-range", "{range4}",
                       "--aux-address", "router={aux4}", "--ipv6", "--subnet", "{s6a}", "--subnet", "{s6b}")
    s4a, s6a, s6b = net.subnets[0], net.subnets[2], net.subnets[3]
    a = start(run_container, servers, net, "a", "app")
    b = start(run_container, servers, net, "b", "app", "--ip6", at(s6b, 0x10))
    assert ipaddress.ip_address(a.ip) in ipaddress.ip_network(s4a.replace(".0/24", ".128/25"))
    assert a.ip != at(s4a, 129) and default_via(a, 4) == at(s4a, 254) == default_via(b, 4)
    # Docker picks a's IPv6 subnet itself (not always the first given): either, with its gateway
    a6 = next(sub for sub in (s6a, s6b) if ipaddress.ip_address(a.ip6) in ipaddress.ip_network(sub))
    assert default_via(a, 6) == at(a6, 1) and default_via(b, 6) == at(s6b, 1)
    for src, dst in ((a, b), (b, a)):                          # one segment over two IPv6 subnets
        n.reaches(src, dst.ip6, 8080, server=dst.name)
        n.reaches(src, dst.ip, 5353, proto="udp", server=dst.name)


def test_ipv6_with_only_an_ipv6_subnet(network_with, run_container, servers):  # noqa: F811
    """Docker 20.10 adds an IPv4 pool of its own; the IPv6 side works and follows the rules."""
    net = network_with("--ipv6", "--subnet", "{s6a}", "-o", "secnet.allow=web->api:tcp/8080")
    s6a = [s for s in net.subnets if ":" in s][0]
    api = start(run_container, servers, net, "api", "api")
    web = start(run_container, servers, net, "web", "web")
    assert api.ip6 and ipaddress.ip_address(api.ip6) in ipaddress.ip_network(s6a)
    assert default_via(api, 6) == at(s6a, 1)
    n.reaches(web, api.ip6, 8080, server=api.name)
    n.blocked(api, web.ip6, 8080)


@pytest.mark.parametrize("backend", ["nftables", "ebpf"])
def test_an_internal_network_of_several_subnets_is_one_network_under_the_rules(
        network_with, run_container, servers, backend):  # noqa: F811
    """U26-F3: an --internal network has no gateway, so members of its other subnets
    were unreachable (ENETUNREACH) whatever the rules said. They are on the bridge: the
    join gives each container link routes to the network's other subnets, and the rules
    decide, in both families; a denied probe times out (policy), it is not unreachable."""
    net = network_with("--internal", "--subnet", "{s4a}", "--subnet", "{s4b}", "--ipv6", "--subnet", "{s6a}",
                       "--subnet", "{s6b}", "-o", "secnet.allow=web->api:tcp/8080", "-o", f"secnet.backend={backend}")
    s4a, s4b, s6a, s6b = net.subnets
    web = start(run_container, servers, net, "web", "web", "--ip", at(s4a, 10), "--ip6", at(s6a, 0x10))
    api = start(run_container, servers, net, "api", "api", "--ip", at(s4b, 10), "--ip6", at(s6b, 0x10))
    db = start(run_container, servers, net, "db", "db", "--ip", at(s4b, 11), "--ip6", at(s6b, 0x11))
    assert default_via(web, 4) == "" and default_via(api, 6) == ""    # internal: still no gateway
    for dst in (api.ip, api.ip6):
        n.reaches(web, dst, 8080, server=api.name)                      # across the subnets, allowed
    results = n.blocked_each([(db, web.ip, 8080, "tcp"), (db, web.ip6, 8080, "tcp"),    # no rule
                              (api, web.ip, 8080, "tcp"), (web, api.ip, 5353, "udp")])
    assert not any("unreachable" in r.err.lower() for r in results), [r.err for r in results]
