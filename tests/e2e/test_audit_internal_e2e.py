"""Audit mode does not open an `--internal` network (user11, U11-F1).

Contract: `--internal` means "no traffic leaves the network, no NAT"; audit mode means
"policy drops nothing" (no rule, egress denied, quarantined, pending). `--internal` is
Docker's network property, not policy: after `secnet mode NET audit` the host still does
not reach a container of an internal network, on both backends (the drop reason
`internal` is not auditable: plugin/enforce/nftables/drops.py AUDITABLE, eBPF
always_drop() in bpf/lib/drop.h). The kernel twin: tests/kernel/test_audit_internal_kernel.py."""
from __future__ import annotations

import random

import pytest

import helpers as h
import ns_helpers as n
import seg_helpers as s
from ns_servers import CPORT, servers, start  # noqa: F401  (servers: a fixture)
from vis_helpers import secnet

pytestmark = pytest.mark.usefixtures("backend")   # every test on every datapath


def _internal_network(make_network) -> h.Network:
    for _ in range(20):
        try:
            return make_network("u11-int", subnet=f"10.230.{random.randint(100, 199)}.0/24",
                                internal=True)
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise AssertionError("no free subnet in 10.230.100-199.0/24")


def test_audit_mode_keeps_an_internal_network_internal(make_network, run_container, servers):
    net = _internal_network(make_network)
    web = start(run_container, servers, net, "u11-web", "web")
    peer = start(run_container, servers, net, "u11-peer", "web")
    s.wait_segments(net, {web.name: "web", peer.name: "web"})
    n.reaches(peer, web.ip, CPORT, server=web.name)
    n.blocked(n.HOST, web.ip, CPORT)                          # enforce: the host gets nothing
    res = secnet("mode", net.name, "audit")
    assert res.returncode == 0, res.stderr
    # audit mode: policy drops nothing, but the network is still --internal
    r = n.probe(n.HOST, web.ip, CPORT)
    assert not r.ok, f"audit mode: the host reached {web.name} ({web.ip}:{CPORT}) on an --internal network: {r}"
