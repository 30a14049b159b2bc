"""Policy as data in a real kernel, on every backend: a live edit is a delta that
leaves allowed flows alone and ends the ones it denies, a join moves a flow's
verdict, overlapping ranges keep their attribution, counters map back to
policy keys, audit mode lets pass and reports, drift is found (an element, a
rule) and a repair undoes it -- proven by packets.

How each backend does it (nft transactions, eBPF generations) is in
test_nftables.py and test_ebpf.py.
"""
from __future__ import annotations

import pytest

from nsfixtures import NET_ID, drain, lab  # noqa: F401  (lab is a fixture)
from packets import (FEW, Sniffer, assert_all, echoes, open_stream, outcomes, parallel, probe_tcp, probe_udp,
                     send_frame, udp4_frame)
from segmentation.policymap import PolicyEntry
from tamper import HOLE_PORT, delete_policy_entry, open_hole

pytestmark = pytest.mark.kernel


def ids(lab) -> dict:
    return lab.allocator.identities(NET_ID)


# --- live edits -------------------------------------------------------------------------

def test_one_rule_edit_is_a_delta_that_keeps_allowed_flows(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432)] == ["ok", "timeout"]
    streams = [open_stream(web, api.ip(fam), 8080) for fam in (4, 6)]
    try:
        lab.update("web->api:tcp/8080 web->api:tcp/5432")      # asserts: no rebuild
        assert [echoes(s) for s in streams] == [True, True]
    finally:
        for s in streams:
            s.close()
    assert [probe_tcp(web, api.ip(f), p) for p in (8080, 5432) for f in (4, 6)] == ["ok"] * 4
    assert lab.drift() == []


def test_a_new_segment_a_join_and_mode_switches_are_deltas(lab):
    web, api, db = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    lab.update("web->api:tcp/8080 web->db:tcp/5432")    # db: a segment nobody was in
    lab.move(db, "db")
    assert [probe_tcp(web, db.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
    lab.update(mode="audit")
    assert probe_tcp(web, db.ip4, 8080) == "ok"
    lab.update(mode="enforce", egress="deny")
    assert [probe_tcp(web, db.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
    assert lab.drift() == []


def test_policy_edit_cuts_the_established_flows_it_denies(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
    # the lab's responder echoes once per connection: one stream per check
    kept = [open_stream(web, api.ip(fam), 8080) for fam in (4, 6)]
    cut = [open_stream(web, api.ip(fam), 8080) for fam in (4, 6)]
    try:
        lab.update("web->api:tcp/5432")
        assert [echoes(s) for s in cut] == [False, False]
        assert [probe_tcp(web, api.ip4, 8080), probe_tcp(web, api.ip6, 5432)] == ["timeout", "ok"]
        lab.update("web->api:tcp/8080, web->api:tcp/5432")
        # allowed again: eBPF judges its kept entry again, nftables' loose TCP
        # tracking picks the stream up as a new flow -- either way it goes on
        assert [echoes(s) for s in kept] == [True, True]
    finally:
        for s in kept + cut:
            s.close()


def test_membership_change_cuts_flows(lab):
    web, b = lab.add(2)
    lab.apply("web->api:tcp/8080, web->db:tcp/5432", {web: "web", b: "api"}, "deny")
    s = open_stream(web, b.ip4, 8080)
    try:
        lab.move(b, "db")
        assert not echoes(s)
    finally:
        s.close()
    assert [probe_tcp(web, b.ip4, p) for p in (8080, 5432)] == ["timeout", "ok"]


# --- counters -------------------------------------------------------------------------------

def test_counters_map_back_to_policy_keys_and_pairs(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    w, a = ids(lab)["web"], ids(lab)["api"]
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert probe_tcp(web, api.ip4, 5432) == "timeout"
    counters = lab.counters()
    key = PolicyEntry(w, a, "tcp", 8080, 8080, "web->api:tcp/8080").key
    assert counters.allowed[key][0] >= 1 and counters.allowed[key][1] > 0
    assert counters.dropped[(w, a)][0] >= 1
    assert counters.reasons["no-rule"][0] >= 1
    assert not counters.would_drop


def test_overlapping_ranges_are_counted_per_rule(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/5000-8080 web->api:tcp/8080-9999", {web: "web", api: "api"}, intra="deny")
    w, a = ids(lab)["web"], ids(lab)["api"]
    low, high = (w, a, "tcp", 5000, 8080), (w, a, "tcp", 8080, 9999)
    assert parallel(probe_tcp, [(web, api.ip4, p) for p in (5432, 8080, 9999)]) == ["ok"] * 3
    counters = lab.counters()
    assert counters.allowed[low][0] > 0 and counters.allowed[high][0] > 0
    lab.update("web->api:tcp/8080-9999")
    assert parallel(probe_tcp, [(web, api.ip4, p) for p in (5432, 8080, 9999)]) == ["timeout", "ok", "ok"]
    assert lab.drift() == []
    # 5432's and 8080's flows against 8080's and 9999's: each rule counts the flow both allow
    assert counters.allowed[low] == counters.allowed[high]


# --- audit mode ---------------------------------------------------------------------------

def test_audit_mode_lets_policy_drops_pass_and_reports_them(lab):
    web, api, bad = lab.add(3)
    events = lab.drop_events()
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny", mode="audit")
    lab.move(bad, None, quarantine="empty label")
    assert parallel(probe_tcp, [(web, api.ip4, 5432), (api, web.ip4, 8080), (bad, api.ip4, 8080)]) \
        == ["ok", "ok", "ok"]
    got = drain(events, 1.0)
    seen = {(e.reason, e.audit, e.dst, e.port) for e in got if e.proto == 6}
    assert ("no-rule", True, api.ip4, 5432) in seen, got
    assert ("quarantined", True, api.ip4, 8080) in seen, got
    spoof_seen = spoofed_frame_arrives(web, api, "10.236.0.250")
    counters = lab.counters()
    assert counters.would_drop[(ids(lab)["web"], ids(lab)["api"])][0] >= 1
    assert counters.would_drop_reasons["no-rule"][0] >= 1
    assert counters.reasons.get("no-rule", (0, 0))[0] == 0              # nothing was dropped
    audited = open_stream(api, web.ip4, 8080)        # denied by policy, passes in audit
    try:
        lab.update(mode="enforce")
        assert not echoes(audited)
    finally:
        audited.close()
    assert parallel(probe_tcp, [(web, api.ip4, 5432), (api, web.ip4, 8080), (bad, api.ip4, 8080),
                                (web, api.ip4, 8080)]) == ["timeout", "timeout", "timeout", "ok"]
    assert {(e.reason, e.audit) for e in drain(events, 1.0) if e.proto == 6} >= {
        ("no-rule", False), ("quarantined", False)}
    assert not spoof_seen, "a spoofed frame passed in audit mode"
    assert lab.dropped("spoofed") >= 1


def test_audit_mode_lets_pending_talk_and_reports_it(lab):
    mon, pend = lab.add(2)
    events = lab.drop_events()
    lab.apply("monitor->*", {mon: "monitor"}, extra_ports=[lab.port(pend)], mode="audit")
    assert_all(outcomes([(mon, pend), (pend, mon)], FEW), "ok")
    assert ("pending", True) in {(e.reason, e.audit) for e in drain(events, 1.0)}
    lab.update(mode="enforce")
    assert_all(outcomes([(mon, pend), (pend, mon)], FEW), "timeout")


def spoofed_frame_arrives(src, dst, fake: str) -> bool:
    """Send one UDP frame from ``src`` with source address ``fake``; did ``dst`` see it?"""
    sniffer = Sniffer(dst)
    try:
        send_frame(src, udp4_frame(src, dst.mac, fake, dst.ip4, 9, b"spoof"))
        return any(b"spoof" in f for f in sniffer.frames(0.5))
    finally:
        sniffer.close()


# --- drift and repair ------------------------------------------------------------------------

def test_drift_finds_a_deleted_policy_element_and_a_repair_restores_it(lab):
    web, api = lab.add(2)
    pm = lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    assert lab.drift() == []
    (entry,) = [e for e in pm.entries if e.rule != "intra"]
    delete_policy_entry(lab, entry)
    assert probe_tcp(web, api.ip4, 8080) == "timeout"      # the deletion really bites
    problems = lab.drift()
    assert problems and all("missing" in p for p in problems), problems
    lab.repair()
    assert lab.drift() == []
    assert [probe_tcp(web, api.ip(f), 8080) for f in (4, 6)] == ["ok", "ok"]


def test_drift_finds_a_changed_rule_and_a_repair_closes_the_hole(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    assert probe_tcp(web, api.ip4, HOLE_PORT) == "timeout"
    open_hole(lab, web, api)
    assert probe_tcp(web, api.ip4, HOLE_PORT) == "ok"       # the hole is real
    assert lab.drift() != []
    lab.repair()
    assert lab.drift() == []
    assert probe_tcp(web, api.ip4, HOLE_PORT) == "timeout"
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert probe_udp(api, web.ip4, 53) == "timeout"


def test_audit_mode_reports_a_quarantined_containers_connection_once(lab):
    """U9-O5: a connection from or to a quarantined container is one reported flow in
    audit mode; its replies (the ephemeral port as "destination") are no flow of their
    own. Every packet still counts as a would-drop; enforce mode drops all of it."""
    web, api, bad = lab.add(3)
    events = lab.drop_events()
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny", mode="audit")
    lab.move(bad, None, quarantine="empty label")
    assert parallel(probe_tcp, [(bad, api.ip4, 8080), (web, bad.ip6, 8080)]) == ["ok", "ok"]
    got = [e for e in drain(events, 1.0) if e.proto in (6, "tcp")]
    flows = {(e.reason, e.audit, e.src, e.dst, e.port) for e in got}
    assert flows == {("quarantined", True, bad.ip4, api.ip4, 8080),
                     ("quarantined", True, web.ip6, bad.ip6, 8080)}, got
    assert lab.dropped("quarantined", audit=True) >= 6      # both directions of both connections
    before = lab.dropped("quarantined", audit=True)
    assert probe_udp(bad, api.ip4) == "ok"                  # neighbours known: a datagram and its echo
    assert lab.dropped("quarantined", audit=True) - before == 2, "each packet counts once"
    lab.update(mode="enforce")
    assert parallel(probe_tcp, [(bad, api.ip4, 8080), (web, bad.ip6, 8080)]) == ["timeout", "timeout"]
