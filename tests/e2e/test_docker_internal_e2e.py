"""Docker's own ``--internal`` bridge networks stay internal next to secnet (U18-F6).

Docker keeps an ``--internal`` network's traffic in with rules of its chain
DOCKER-ISOLATION-STAGE-1, which FORWARD consults after DOCKER-USER, where secnet
accepts what its own rules passed: secnet's rules walk that chain first. Other
Docker networks stay "outside", judged by secnet's egress and CIDR rules
(contract; docs/deviations.md). Real TCP between containers of the networks.
"""
from __future__ import annotations

import pytest

import helpers as h

pytestmark = pytest.mark.usefixtures("backend")  # every test on every datapath
SEG = "secnet.segment"


def test_an_internal_docker_network_is_reached_neither_from_nor_into_a_secnet_network(make_network, run_container):
    internal = make_network("sn-dint", driver="bridge", internal=True)
    plain = make_network("sn-dplain", driver="bridge")
    rules = f"{internal.subnet}->web:tcp/{h.LISTEN_PORT} {plain.subnet}->web:tcp/{h.LISTEN_PORT}"
    net = make_network("sn-dint-src", opts={"secnet.allow": rules})     # egress=allow (default)
    inside = run_container(internal, "inside")
    other = run_container(plain, "other")
    web = run_container(net, "web", labels={SEG: "web"})
    # the plain bridge network is outside: egress=allow lets web out, the CIDR rule lets it in
    h.assert_reaches(web, other, h.LISTEN_PORT)
    h.assert_reaches(other, web, h.LISTEN_PORT)
    # the --internal one is Docker's to keep in, whatever secnet's egress and rules say
    assert not h.tcp(web, inside, h.LISTEN_PORT), "a secnet container reached an --internal network"
    assert not h.tcp(inside, web, h.LISTEN_PORT), "an --internal network's container got out to secnet"
