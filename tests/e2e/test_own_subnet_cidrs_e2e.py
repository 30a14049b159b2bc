"""CIDR rules that cover one of the network's own subnets, on a network with two IPv4 and two
IPv6 subnets, on both backends. A CIDR names "a source outside the network" (SRC) or "a
destination outside the network" (DST); "Outside is everything that is not a container of this
network". So a CIDR that covers a subnet of the network opens nothing between its members:
it names the host's addresses there (the subnet's gateway) and nothing else. `explain` and
`verify` agree.
"""
from __future__ import annotations

import random

import pytest

import flow_helpers as fh
import helpers as h
import ns_helpers as n
import seg_helpers as sh
from vis_helpers import secnet_json

pytestmark = pytest.mark.usefixtures("backend")

PORT = h.LISTEN_PORT



def two_subnet_network():
    """egress=deny; web and db in subnet A, api in subnet B (both families)."""
    for _ in range(20):
        k = random.randint(0, 99) * 2
        a4, b4 = f"10.235.{k}.0/24", f"10.235.{k + 1}.0/24"
        a6, b6 = f"fd00:235:0:{k:x}::/64", f"fd00:235:0:{k + 1:x}::/64"
        rules = f"web->{b4}:tcp web->[{b6}]:tcp {a4}->api:tcp/{PORT} [{a6}]->api:tcp/{PORT}"
        args = ["network", "create", "-d", "secnet", "--subnet", a4, "--subnet", b4, "--ipv6",
                "--subnet", a6, "--subnet", b6, "-o", "secnet.egress=deny", "-o", f"secnet.allow={rules}"]
        if h.DEFAULT_BACKEND:
            args += ["-o", f"secnet.backend={h.DEFAULT_BACKEND}"]
        name = h.unique("u9-own")
        res = h.docker(*args, name, check=False)
        if res.returncode == 0:
            return h.Network(name=name, id=res.stdout.strip(), subnet=a4, subnet6=a6), (a4, b4, a6, b6)
        if "overlap" not in res.stderr:
            raise AssertionError(res.stderr)
    raise AssertionError("no free subnets")


def test_a_cidr_covering_an_own_subnet_opens_nothing_between_members(run_container, flows):
    net, (a4, b4, a6, b6) = two_subnet_network()
    try:
        _check(net, a4, b4, a6, b6, run_container, flows)
    finally:
        for c in h.attached_containers(net.id):
            h.docker("rm", "-f", c, check=False)
        flows.stop_all()
        h.docker("network", "rm", net.id, check=False)


def _check(net, a4, b4, a6, b6, run_container, flows):
    at = fh.host_in
    web = run_container(net, "u9-web", labels={"secnet.segment": "web"},
                        extra=["--ip", at(a4, 10), "--ip6", at(a6, 0x10)])
    db = run_container(net, "u9-db", labels={"secnet.segment": "db"},
                       extra=["--ip", at(a4, 11), "--ip6", at(a6, 0x11)])
    api = run_container(net, "u9-api", labels={"secnet.segment": "api"},
                        extra=["--ip", at(b4, 10), "--ip6", at(b6, 0x10)])
    # web -> api (in subnet B, which web's CIDR rule covers): no segment rule, denied
    n.blocked_each([(src, api.ip if family == 4 else api.ip6, PORT, "tcp")   # side by side
                    for src, family in ((web, 4), (web, 6), (db, 4), (db, 6))])
    for src in (web.name, db.name):
        why = secnet_json("explain", net.name, src, api.name, f"tcp/{PORT}")
        assert not why["allowed"], why
    # the host's address in subnet B is outside: web's CIDR rule lets web reach it
    sink = flows.sink(n.HOST, [("tcp", 18777)])
    flows.stream(web, "gwb", "tcp", at(b4, 1), 18777)
    flows.stream(web, "gwb6", "tcp", at(b6, 1), 18777)
    fh.all_flowing(sink, ["gwb", "gwb6"])
    # the host from its address in subnet A (inside the SRC CIDR) reaches api; from B it does not
    n.reaches(n.HOST, api.ip, PORT, src=at(a4, 1))
    n.reaches(n.HOST, api.ip6, PORT, src=at(a6, 1))
    n.blocked_each([(n.HOST, api.ip, PORT, "tcp", at(b4, 1)),     # side by side
                    (n.HOST, api.ip6, PORT, "tcp", at(b6, 1))])
    res = sh.secnet("verify", net.name)
    assert res.returncode == 0, res.stdout + res.stderr
