"""The admin's own DOCKER-USER rules (Docker's documented place for them: who may
reach published ports) still apply to a secnet network made after them (U18-F7:
secnet's rules used to be inserted at the top of the chain, above the admin's).

Real packets from the "outside host" (a network namespace behind a veth, see
outside_host) to a port published on a secnet network, with an admin's DROP for
that source inserted in DOCKER-USER before the network was made.
"""
from __future__ import annotations

import pytest

import helpers as h
import ns_helpers as n
from ns_servers import CPORT, servers, start  # noqa: F401  (servers: a fixture)
from outside_host import outside  # noqa: F401  (outside: a fixture)

pytestmark = pytest.mark.usefixtures("backend")  # every test on every datapath


def test_an_admins_drop_holds_for_a_network_made_after_it(make_network, run_container, servers, outside):
    rule = ["-i", outside.veth_host, "-s", n.OUT4, "-m", "comment", "--comment", "test: the admin's own", "-j", "DROP"]
    h.run(["iptables", "-w", "5", "-I", "DOCKER-USER", *rule])
    try:
        net = n.ns_network(make_network, "sn-ns-admin", ipv6=False)
        port = n.free_port()
        web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"], tcp=(CPORT,))
        n.reaches(n.HOST, n.HOST4, port, server=web.name)       # published, and up
        n.blocked(outside.place, n.HOST4, port)                  # the admin dropped this source
    finally:
        h.run(["iptables", "-w", "5", "-D", "DOCKER-USER", *rule], check=False)
    n.reaches(outside.place, n.HOST4, port, server=web.name)     # and nothing else did
