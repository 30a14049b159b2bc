"""Audit mode's would-drops are counted per pair as per reason, on both backends (U14-F1).

Contract: audit mode -- what enforce mode would drop is "counted in the metrics as
would-drop"; backends -- "the same CLI output (... `metrics`)". The per-pair series
(`secnet_would_drop_packets_total`, :func:`plugin.observe.counting.per_pair`) must add
up to the per-reason one (`secnet_would_drops_total`) and name the same pairs on both
backends. Before the fix nftables counted a quarantined or pending container's
would-drops (its bridge table's) per reason only: no pair at all.

Real packets of every kind of would-drop: no rule, intra=deny, egress, ingress without a
CIDR rule, a group copy to another segment, from and to a quarantined container, from and
to a pending one. The pairs are named as eBPF names them: the sender of a frame to an
inactive container is ``(outside)`` (judged at that container's port, unknown there).
"""
from __future__ import annotations

import socket

import pytest

from nsfixtures import OUTSIDE4
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import ns_socket, probe_addr, probe_tcp

pytestmark = pytest.mark.kernel
OUT, Q, P = "(outside)", "(quarantined)", "(pending)"
#: the pairs each kind of would-drop below is counted in
EXPECTED = {("web", "db"), ("web", "web"), ("web", OUT), (OUT, "api"), ("web", "api"),
            (Q, "web"), (OUT, Q), (P, "web"), (OUT, P)}
#: pairs an inactive container's own housekeeping may add (IPv6 ND, MLD: multicast)
NOISE = {(Q, OUT), (P, OUT)}


def _broadcast(src, port: int = 7400) -> None:
    """Three UDP datagrams from ``src`` to the subnet's broadcast address."""
    s = ns_socket(src.ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for _ in range(3):
            s.sendto(b"b", ("10.236.0.255", port))
    finally:
        s.close()


def test_would_drops_per_pair_add_up_to_the_reasons(lab):
    web, web2, api, db, bad, new = lab.add(6)
    lab.apply("web->api:tcp/8080", {web: "web", web2: "web", api: "api", db: "db", bad: "web", new: None},
              intra="deny", egress="deny", mode="audit")
    lab.move(bad, None, quarantine="invalid label")
    got = {
        "no rule": probe_tcp(web, db.ip4, 8080),
        "intra": probe_tcp(web, web2.ip4, 8080),
        "egress": probe_addr(web, OUTSIDE4, "tcp", 8080),
        "ingress": probe_tcp(lab.outside, api.ip4, 8080),
        "from quarantined": probe_tcp(bad, web.ip4, 8080),
        "to quarantined": probe_tcp(web, bad.ip4, 8080),
        "from pending": probe_tcp(new, web.ip4, 8080),
        "to pending": probe_tcp(web, new.ip4, 8080),
    }
    assert set(got.values()) == {"ok"}, f"audit mode passes every one: {got}"
    _broadcast(web)   # copies to api and db: no-rule (to web2: intra=deny)
    counters = lab.counters()
    from plugin.observe.counting import per_pair   # noqa: PLC0415
    _allowed, _dropped, would = per_pair(lab.policy, counters)
    pairs = {k: tuple(v) for k, v in would.items() if v[0]}
    reasons = {k: v for k, v in counters.would_drop_reasons.items() if v[0]}
    print("\nDBG", lab.backend_name, sorted(pairs.items()), reasons)
    assert EXPECTED <= set(pairs) <= EXPECTED | NOISE | {("web", "db")}, \
        f"{lab.backend_name}: pairs {sorted(pairs)}; missing {EXPECTED - set(pairs)}"
    for i, what in enumerate(("packets", "bytes")):
        assert sum(v[i] for v in pairs.values()) == sum(v[i] for v in reasons.values()), \
            f"{lab.backend_name}: would-drop {what} per pair {pairs} != per reason {reasons}"
    assert set(reasons) == {"no-rule", "egress", "quarantined", "pending"}, reasons
