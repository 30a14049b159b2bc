"""Endpoints never outlive their containers (issue 10, the fourth kind found):
a container removed while the daemon was down leaves Docker no reason to
call DeleteEndpoint again. Its row, veth, rules and held host port must go
when the daemon is back, or the next container with the same -p or the
same address cannot start or is judged as the old one."""
from __future__ import annotations

import pytest

import flow_helpers as fh
import helpers as h
import ns_helpers as n

SEG = "secnet.segment"


@pytest.mark.exclusive
def test_a_container_removed_while_the_daemon_was_down_leaves_nothing(make_network, run_container):
    net = fh.network(make_network, "sn-stale", opts={"secnet.allow": "web->api:tcp/8080"}, ipv6=False)
    addr = fh.host_in(net.subnet, 50)
    port = n.free_port(proto=("tcp",))
    api = run_container(net, "api", labels={SEG: "api"}, extra=["--ip", addr, "-p", f"{port}:8080"])
    web = run_container(net, "web", labels={SEG: "web"})
    h.plugin_kill()
    try:
        h.docker("rm", "-f", api.name, timeout=180)
    finally:
        h.plugin_start()
    h.wait_until(lambda: not h.state_endpoint_rows(endpoint_id=api.endpoint_id), 15,
                 "the removed container's endpoint to be dropped")
    assert h.links_owned_by(api.endpoint_id) == []
    new = run_container(net, "api", labels={SEG: "api"}, extra=["--ip", addr, "-p", f"{port}:8080"])
    assert new.ip == addr
    n.reaches(n.HOST, "127.0.0.1", port, within=5)              # the held port went with the old one
    assert h.tcp(web, new, 8080)
