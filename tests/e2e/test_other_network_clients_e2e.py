"""Clients on another Docker network reach a published port with their own address.

Found by black-box testing (user5, O2): a container on a Docker bridge network
connecting to a secnet container's published port arrived masqueraded to the
secnet network's gateway, so a CIDR-source rule naming the client's subnet
could not match and `secnet log` named the wrong source. The cause is Docker's
own rule for the client's network (``-s SUBNET ! -o ITS_BRIDGE -j
MASQUERADE``); secnet binds such flows to their own source first
(plugin/enforce/nftables/northsouth.py, ``nat_keep``). On both backends (the
eBPF backend's NAT is the same nftables chains).

Networks: the client's bridge network gets an explicit random 10.220-229.x.0/24
subnet (helpers.pick_subnet4); the secnet network 10.222-223.x.0/24.
"""
from __future__ import annotations

import pytest

import ns_helpers as n
import seg_helpers as s
import vis_helpers as v
from ns_servers import CPORT, servers, start  # noqa: F401  (servers: a fixture)


def _client(make_network, run_container):
    """A container on a Docker bridge network of our own, and that network's gateway
    (an address of the host: the client's way to the host's published ports)."""
    net = make_network("sn-oc-cli", driver="bridge")
    c = run_container(net, "cli", cmd=n.SLEEP)
    return c, net.subnet.rsplit(".", 1)[0] + ".1"


@pytest.mark.usefixtures("backend")
def test_a_client_of_another_network_keeps_its_address(make_network, run_container, servers):
    # (a hairpin is east-west: peer needs its rule to web's container port)
    net = n.ns_network(make_network, "sn-oc", ipv6=False, opts={"secnet.allow": f"peer->web:tcp/{CPORT}"})
    port = n.free_port()
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    peer = start(run_container, servers, net, "peer", "peer")
    client, host = _client(make_network, run_container)
    s.wait_segments(net, {web.name: "web", peer.name: "peer"})
    r = n.reaches(client, host, port, server=web.name)
    assert r.peer == client.ip, f"{web.name} saw {r.peer}, not the client's {client.ip}"
    # hairpin stays masqueraded to the gateway (replies must come back through the host)
    r = n.reaches(peer, host, port, server=web.name)
    assert r.peer == n.gateway(net, 4), f"hairpin seen as {r.peer}"


@pytest.mark.usefixtures("backend")
def test_a_cidr_rule_naming_the_clients_subnet(make_network, run_container, servers):
    client, host = _client(make_network, run_container)
    net = n.ns_network(make_network, "sn-oc-rule", ipv6=False)
    res = v.secnet("policy", net.name, "set", f"{client.network.subnet}->web:tcp/{CPORT}")
    assert res.returncode == 0, res.stderr
    port = n.free_port()
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    s.wait_segments(net, {web.name: "web"})
    r = n.reaches(client, host, port, server=web.name)
    assert r.peer == client.ip
    res = v.secnet("policy", net.name, "set", f"10.239.250.0/24->web:tcp/{CPORT}")
    assert res.returncode == 0, res.stderr
    since = v.log_cursor()
    n.blocked(client, host, port)
    entry, _ = v.wait_entry(net, since, lambda e: e.get("dport") == CPORT and e["reason"] == "no-rule")
    assert entry["src"]["address"] == client.ip and entry["src"]["outside"], \
        f"the log names {entry['src']} as the source, not the client {client.ip}"
