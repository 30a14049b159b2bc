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
from packets import arp_frame, ns_socket, probe_addr, probe_tcp, send_frame, sh

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


def _would(lab) -> tuple:
    """({(src, dst): (packets, bytes)} per pair, {reason: (packets, bytes)}), non-zero ones."""
    from plugin.observe.counting import per_pair   # noqa: PLC0415
    counters = lab.counters()
    _allowed, _dropped, would = per_pair(lab.policy, counters)
    return ({k: tuple(v) for k, v in would.items() if v[0]},
            {k: tuple(v) for k, v in counters.would_drop_reasons.items() if v[0]})


def _assert_sums(lab, pairs: dict, reasons: dict) -> None:
    for i, what in enumerate(("packets", "bytes")):
        assert sum(v[i] for v in pairs.values()) == sum(v[i] for v in reasons.values()), \
            f"{lab.backend_name}: would-drop {what} per pair {pairs} != per reason {reasons}"


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
    pairs, reasons = _would(lab)
    assert EXPECTED <= set(pairs) <= EXPECTED | NOISE, \
        f"{lab.backend_name}: pairs {sorted(pairs)}; missing {EXPECTED - set(pairs)}"
    _assert_sums(lab, pairs, reasons)
    assert set(reasons) == {"no-rule", "egress", "quarantined", "pending"}, reasons
    # a flow's first packet (the SYN, 60 bytes) and 3 group copies (29 bytes each): the
    # same numbers on both backends (an inactive container's flows: every packet, but
    # how many a connection has depends on its timing)
    want = {("web", "db"): (4, 147), ("web", "web"): (4, 147), ("web", "api"): (3, 87), (OUT, "api"): (1, 60)}
    assert {k: pairs[k] for k in want} == want, lab.backend_name


@pytest.mark.parametrize("state", ["quarantined", "pending"])
def test_an_inactive_containers_arp_is_counted_to_its_target(lab, state):
    """An ARP request (28 bytes from the network header on) of a pending or quarantined
    container for a member's address: one would-drop, (state) -> the member's segment,
    and the member's reply one, (outside) -> (state), on both backends (eBPF named the
    request's target (outside) before; nftables counted neither per pair)."""
    web, bad = lab.add(2)
    # IPv4 only here: the containers' own IPv6 start-up (MLD reports, 96 bytes, resent ~1 s
    # apart) would land in the counting window at random as (state) -> (outside)
    for c in (web, bad):
        sh("ip", "netns", "exec", c.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    lab.apply("", {web: "web", bad: "web" if state == "quarantined" else None}, mode="audit")
    if state == "quarantined":
        lab.move(bad, None, quarantine="invalid label")
    before, _ = _would(lab)
    send_frame(bad, arp_frame(bad.mac, bad.ip4, web.ip4, op=1))
    after, reasons = _would(lab)
    changed = {k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1])
               for k, v in after.items() if v != before.get(k)}
    assert changed == {(f"({state})", "web"): (1, 28), (OUT, f"({state})"): (1, 28)}, \
        f"{lab.backend_name}: {changed}"
    _assert_sums(lab, after, reasons)
