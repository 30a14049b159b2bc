"""A capture on the bridge (promiscuous mode) does not cut the containers off their
gateway: neighbour discovery to the host passes on both backends.

In promiscuous mode br_netfilter (``br_nf_local_in``) drops the conntrack reference of
the multicast frames it passes up to the host, so a container's neighbour solicitation
for its gateway reaches the host's input hook with no conntrack state; nftables'
``host_in`` dropped it as ``invalid`` before it got to accept neighbour discovery, and
the container could not resolve its gateway while anyone ran tcpdump on the bridge.
"""
from __future__ import annotations

import pytest

from nsfixtures import BRIDGE, GATEWAY6, lab  # noqa: F401 (fixture)
from packets import probe_icmp, sh

pytestmark = pytest.mark.kernel


def test_a_container_resolves_its_gateway_while_the_bridge_is_promiscuous(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    sh("ip", "-n", lab.host, "link", "set", BRIDGE, "promisc", "on")
    for c in (web, api):
        c.ip_cmd("-6", "neigh", "flush", "dev", "eth0")
        assert probe_icmp(c, GATEWAY6) == "ok", f"{c.ns} cannot reach its gateway {GATEWAY6}"
