"""DNS-name rules with real packets, on every backend: answers held until learned.

Each test runs on the lab (``nsfixtures``: a host namespace with a bridge,
containers, an outside namespace) with a ``DnsRig`` (``dns_lab``): a DNS
server and echo servers behind test addresses outside, and the daemon's
``DnsService`` on the lab's backend. Egress is denied but DNS to the server;
what a container may reach beyond that, it learned from an answer.
"""
from __future__ import annotations

import socket
import struct
import time
import uuid

import dns.exception
import pytest

from dns_lab import DNS6, DNS_RULES, DnsRig, connect, open_connection, resolve
from nsfixtures import NET_ID, NsKernel, lab  # noqa: F401  (lab is a fixture)
from packets import ns_socket, probe_icmp
from plugin.kernel.conntrack import Flows
from plugin.observe.counting import OUTSIDE, per_pair, per_rule

pytestmark = pytest.mark.kernel

RULES = ("web->dns(api.example.test):tcp/443 web->dns(*.wild.test):tcp/443 "
         "web->dns(alias.example.test):tcp")


def _zone(server) -> None:
    server.add("api.example.test", "A", 300, "10.238.0.5")
    server.add("api.example.test", "AAAA", 300, "fd00:238::5")
    server.add("other.example.test", "A", 300, "10.238.0.6")
    server.add("a.wild.test", "A", 300, "10.238.0.8")
    server.add("wild.test", "A", 300, "10.238.0.9")
    server.add("alias.example.test", "CNAME", 300, "edge.cdn.test.")
    server.add("edge.cdn.test", "CNAME", 300, "e1.cdn.test.")
    server.add("e1.cdn.test", "A", 300, "10.238.0.7")


def _rig(lab, rules: str, min_ttl: int = 60, mode=None, **kw):
    web, api = lab.add(2)
    lab.apply(f"{rules} {DNS_RULES}", {web: "web", api: "api"}, egress="deny", mode=mode)
    rig = DnsRig(lab, min_ttl=min_ttl, **kw)
    _zone(rig.server)
    rig.start()
    return rig, web, api


@pytest.fixture
def learning(lab):
    """(rig, web, api) with RULES; the rig stops before the lab goes."""
    rig, web, api = _rig(lab, RULES)
    try:
        yield rig, web, api
    finally:
        rig.close()


def test_exact_name_is_allowed_only_after_the_answer_and_only_its_service(learning):
    rig, web, _api = learning
    assert connect(web, "10.238.0.5") == "timeout"          # nothing learned yet
    assert resolve(web, "api.example.test") == ["10.238.0.5"]
    assert connect(web, "10.238.0.5") == "ok"
    assert connect(web, "10.238.0.5", 80) == "timeout"      # the rule says tcp/443
    (grant,) = rig.learned()
    ids = rig.lab.allocator.identities(NET_ID)
    assert (grant.identity, grant.address, grant.proto, grant.lo, grant.hi) == (
        ids["web"], "10.238.0.5", "tcp", 443, 443)
    assert 290 <= grant.expires - time.time() <= 301


def test_other_names_and_wildcard_parent_teach_nothing(learning):
    rig, web, _api = learning
    assert resolve(web, "other.example.test") == ["10.238.0.6"]
    assert resolve(web, "wild.test") == ["10.238.0.9"]
    assert resolve(web, "A.Wild.TEST") == ["10.238.0.8"]
    assert connect(web, "10.238.0.6") == "timeout"
    assert connect(web, "10.238.0.9") == "timeout"
    assert connect(web, "10.238.0.8") == "ok"
    assert {g.address for g in rig.learned()} == {"10.238.0.8"}


def test_cname_chain_ipv6_and_tcp_answers(learning):
    rig, web, _api = learning
    assert resolve(web, "alias.example.test") == ["10.238.0.7"]
    assert connect(web, "10.238.0.7", 80) == "ok"          # dns(alias...):tcp = every port
    assert resolve(web, "api.example.test", "AAAA", tcp=True) == ["fd00:238::5"]
    assert connect(web, "fd00:238::5") == "ok"
    assert resolve(web, "api.example.test", server=DNS6) == ["10.238.0.5"]
    assert connect(web, "10.238.0.5") == "ok"


def test_another_segment_cannot_use_the_first_segments_answer(learning):
    rig, web, api = learning
    assert resolve(web, "api.example.test") == ["10.238.0.5"]
    assert connect(web, "10.238.0.5") == "ok"
    assert connect(api, "10.238.0.5") == "timeout"
    assert resolve(api, "api.example.test") == ["10.238.0.5"]   # api has no DNS rule
    assert connect(api, "10.238.0.5") == "timeout"


def test_each_dns_rule_counts_the_flows_it_opened(lab):
    """`secnet show`'s per-rule counters (observe.counting): a flow that a learned address
    admitted counts for the DNS rule whose answer taught it, and for no other DNS rule,
    also of the same service (test_dns_counting_kernel.py: an address two rules taught)."""
    exact, shared = "web->dns(api.example.test):tcp/443", "web->dns(*.wild.test):tcp/443"
    every, ranged = "web->dns(alias.example.test):tcp", "web->dns(other.example.test):tcp/70-90"
    rig, web, _api = _rig(lab, " ".join((exact, shared, every, ranged)))
    try:
        assert resolve(web, "api.example.test") == ["10.238.0.5"]
        assert connect(web, "10.238.0.5") == "ok" and connect(web, "10.238.0.5") == "ok"
        first = per_rule(lab.policy, rig.counters())
        assert first[exact][0] >= 2 and first[exact][1] > 0, first
        assert first[shared] == [0, 0], first
        assert first[every] == first[ranged] == [0, 0], first
        assert resolve(web, "alias.example.test") == ["10.238.0.7"]
        assert resolve(web, "other.example.test") == ["10.238.0.6"]
        assert connect(web, "10.238.0.7", 80) == "ok" and connect(web, "10.238.0.6", 80) == "ok"
        counters = rig.counters()
        then = per_rule(lab.policy, counters)
        assert then[every][0] >= 1 and then[ranged][0] >= 1 and then[exact] == first[exact], then
        allowed, _dropped, _would = per_pair(lab.policy, counters)   # metrics: web -> (outside)
        queries = sum(then[r][0] for r in DNS_RULES.split())         # only web asked
        assert allowed[("web", OUTSIDE)][0] == queries + then[exact][0] + then[every][0] + then[ranged][0]
    finally:
        rig.close()


def test_first_connection_right_after_the_answer_never_races(lab):
    rig, web, _api = _rig(lab, "web->dns(*.many.test):tcp/443")
    try:
        for i in range(100):
            rig.server.add(f"n{i}.many.test", "A", 300, f"10.238.1.{i + 1}")
        failures = []
        for i in range(100):
            (address,) = resolve(web, f"n{i}.many.test")
            outcome = connect(web, address, timeout=0.5)
            if outcome != "ok":
                failures.append((address, outcome))
        assert failures == []
        assert len(rig.learned()) == 100
    finally:
        rig.close()


def test_expiry_ends_new_flows_but_not_open_ones(lab):
    rig, web, _api = _rig(lab, "web->dns(short.example.test):tcp/443", min_ttl=1)
    try:
        rig.server.add("short.example.test", "A", 2, "10.238.0.20")
        assert resolve(web, "short.example.test") == ["10.238.0.20"]
        conn = open_connection(web, "10.238.0.20")
        try:
            time.sleep(3.5)
            assert connect(web, "10.238.0.20") == "timeout"
            assert rig.learned() == []
            conn.sendall(b"still")
            assert conn.recv(16) == b"still"
        finally:
            conn.close()
        assert rig.service.learned(NET_ID) == {}
    finally:
        rig.close()


def _echoes(conn, data: bytes) -> bool:
    try:
        conn.sendall(data)
        return conn.recv(16) == data
    except OSError:      # socket.timeout included: the flow was ended
        return False


def _prune(rig) -> None:
    """What the reconciler does after a change, on every backend: prune conntrack (and,
    on eBPF, the program's own entries of learned flows no rule keeps)."""
    lab = rig.lab
    learned, admitted = rig.service.learned(NET_ID), rig.service.admitted(NET_ID)
    Flows(NsKernel(lab.host)).enforce_policy(lab.policy, lab.ports(), learned=learned, admitted=admitted)
    if hasattr(lab.backend.obj, "end_learned_flows"):
        lab.backend.end_learned_flows(lab.net, lab.policy, learned, admitted)


def test_open_flow_outlives_expiry_edits_and_repairs_until_its_rule_goes(lab):
    rule = "web->dns(short.example.test):tcp/443"
    rig, web, _api = _rig(lab, rule, min_ttl=1)
    try:
        rig.server.add("short.example.test", "A", 2, "10.238.0.21")
        assert resolve(web, "short.example.test") == ["10.238.0.21"]
        conn = open_connection(web, "10.238.0.21")
        try:
            assert _echoes(conn, b"open")
            flows = [e for e in NsKernel(lab.host).entries() if e.orig.dst == "10.238.0.21"]
            assert flows and all(e.learned for e in flows)      # the connection remembers it
            time.sleep(3.5)
            assert rig.learned() == []
            lab.update(f"{rule} web->api:tcp/8080 {DNS_RULES}")  # unrelated: eBPF judges again
            rig.tell()
            _prune(rig)
            assert _echoes(conn, b"edited")
            lab.repair()                                        # a drift repair: whole network
            rig.tell()
            _prune(rig)
            assert _echoes(conn, b"repaired")
            assert connect(web, "10.238.0.21") == "timeout"     # a new flow: expired
            lab.update(f"web->api:tcp/8080 {DNS_RULES}")        # the dns rule goes
            rig.tell()
            _prune(rig)
            assert not _echoes(conn, b"gone")
        finally:
            conn.close()
    finally:
        rig.close()


@pytest.mark.parametrize("in_audit", [False, True], ids=["enforce", "removed-in-audit"])
def test_removing_one_of_two_dns_rules_ends_only_the_flows_its_answers_admitted(lab, in_audit):
    """U7-F1: two rules on one service; .31 taught by the kept rule (expired by the
    edit), .32 by the removed one only, .33 by both. Only the flow to .32 ends: at the
    edit, or (removed in audit mode) when the network is switched back to enforce."""
    keep, gone = "web->dns(keep.example.test):tcp/443", "web->dns(gone.example.test):tcp/443"
    rig, web, _api = _rig(lab, f"{keep} {gone}", min_ttl=1)
    conns = {}
    try:
        for a in ("10.238.0.31", "10.238.0.33"):
            rig.server.add("keep.example.test", "A", 2, a)
        for a in ("10.238.0.32", "10.238.0.33"):
            rig.server.add("gone.example.test", "A", 300, a)
        assert sorted(resolve(web, "keep.example.test")) == ["10.238.0.31", "10.238.0.33"]
        assert sorted(resolve(web, "gone.example.test")) == ["10.238.0.32", "10.238.0.33"]
        conns = {a: open_connection(web, f"10.238.0.{a}") for a in (31, 32, 33)}
        assert all(_echoes(c, b"open") for c in conns.values())
        time.sleep(3.5)                                     # keep's answer expired
        if in_audit:
            lab.update(mode="audit")
        lab.update(f"{keep} {DNS_RULES}")                   # the rule goes: its answers with it
        rig.tell()
        if in_audit:                                        # audit ends nothing; enforce does
            assert all(_echoes(c, b"audit") for c in conns.values())
            lab.update(mode="enforce")
            rig.tell()
        _prune(rig)
        assert {a: _echoes(c, b"edited") for a, c in conns.items()} == {31: True, 32: False, 33: True}
        assert connect(web, "10.238.0.32") == "timeout" and connect(web, "10.238.0.31") == "timeout"
    finally:
        for c in conns.values():
            c.close()
        rig.close()


def test_answers_are_dropped_while_nobody_reads_the_queue(learning):
    rig, web, api = learning
    assert rig.queue_rules() == 2
    rig.stop()
    with pytest.raises(dns.exception.Timeout):
        resolve(web, "api.example.test", timeout=1.0)   # held, nobody reads: fail closed
    assert resolve(api, "api.example.test") == ["10.238.0.5"]   # api has no DNS rule: not held
    assert connect(web, "10.238.0.5") == "timeout"


def test_restart_and_rebuild_keep_what_was_learned_and_removed_rules_are_revoked(learning):
    rig, web, _api = learning
    assert resolve(web, "api.example.test") == ["10.238.0.5"]
    assert resolve(web, "a.wild.test") == ["10.238.0.8"]
    rig.stop()
    rig.lab.repair()                                   # a whole-network rewrite keeps them
    assert connect(web, "10.238.0.5") == "ok"
    rig.start()                                        # a new daemon adopts them
    assert set(rig.service.learned(NET_ID)) == {
        ("web", "web->dns(api.example.test):tcp/443"), ("web", "web->dns(*.wild.test):tcp/443")}
    assert connect(web, "10.238.0.8") == "ok"
    rig.lab.update(f"web->dns(api.example.test):tcp/443 {DNS_RULES}")   # a live edit drops a rule
    rig.tell()
    assert connect(web, "10.238.0.8") == "timeout"
    assert connect(web, "10.238.0.5") == "ok"
    assert {g.address for g in rig.learned()} == {"10.238.0.5"}


def test_bound_refuses_new_addresses_fail_closed(lab):
    rig, web, _api = _rig(lab, "web->dns(*.many.test):tcp/443", max_per_network=2)
    try:
        for i in range(3):
            rig.server.add(f"b{i}.many.test", "A", 300, f"10.238.2.{i + 1}")
            assert resolve(web, f"b{i}.many.test") == [f"10.238.2.{i + 1}"]
        assert [connect(web, f"10.238.2.{i + 1}") for i in range(3)] == ["ok", "ok", "timeout"]
        assert rig.service.status()["refused"] == 1
    finally:
        rig.close()


def test_a_join_marks_and_a_leave_unmarks_by_delta(learning):
    rig, web, api = learning
    (late,) = rig.lab.add(1)
    rig.lab.move(late, "web")
    rig.service.ports(NET_ID, [(None, rig.lab.members[late])])
    assert resolve(late, "api.example.test") == ["10.238.0.5"]
    assert connect(late, "10.238.0.5") == "ok"
    assert rig.service.obj.marks.marked() == {web.ip4, web.ip6, late.ip4, late.ip6}
    rig.service.ports(NET_ID, [(rig.lab.members[late], None)])
    assert rig.service.obj.marks.marked() == {web.ip4, web.ip6}


def test_the_hold_leaves_the_hosts_path_with_the_last_held_address(learning):
    """U26-F2: the queue rules (any packet with the mark bit, no bypass) and the table
    stayed after the last network went, dropping other tools' marked packets for good."""
    rig, web, _api = learning
    assert rig.queue_rules() == 2 and rig.dns_table()
    rig.service.removed(NET_ID)                        # the last network with DNS members
    assert rig.queue_rules() == 0 and not rig.dns_table()
    rig.tell()                                         # back: made again with the first held address
    assert rig.queue_rules() == 2 and rig.dns_table()
    assert resolve(web, "api.example.test") == ["10.238.0.5"]
    assert connect(web, "10.238.0.5") == "ok"


def test_a_daemon_that_holds_nothing_after_its_first_pass_removes_an_earlier_hold(learning):
    rig, _web, _api = learning
    rig.stop()                                          # an earlier daemon's hold stays
    rig.serve()                                         # a new one, whose first pass holds nothing
    assert rig.queue_rules() == 2 and rig.dns_table()   # kept until then (answers held meanwhile)
    assert rig.service.call(lambda: rig.service.obj.marks.present())   # one netlink request
    rig.service.settle()
    assert rig.queue_rules() == 0 and not rig.dns_table()
    assert not rig.service.call(lambda: rig.service.obj.marks.present())


def test_audit_mode_passes_learned_or_not_and_reports_as_usual(lab):
    rig, web, _api = _rig(lab, RULES, mode="audit")
    try:
        assert connect(web, "10.238.0.6") == "ok"               # no answer taught it: would drop
        assert lab.dropped("egress", audit=True) >= 1
        before = lab.dropped("egress", audit=True)
        assert resolve(web, "api.example.test") == ["10.238.0.5"]
        assert connect(web, "10.238.0.5") == "ok"               # learned: allowed, not reported
        assert lab.dropped("egress", audit=True) == before
        assert {g.address for g in rig.learned()} == {"10.238.0.5"}
    finally:
        rig.close()


def _icmp_arrives(src, outside, address: str, kind: int) -> bool:
    """Does an ICMP (ICMPv6 for an IPv6 ``address``) message of type ``kind`` from
    container ``src`` reach the outside namespace? (A raw socket there sees it.)"""
    v4 = ":" not in address
    fam, proto = (socket.AF_INET, socket.IPPROTO_ICMP) if v4 else (socket.AF_INET6, socket.IPPROTO_ICMPV6)
    token = uuid.uuid4().bytes
    body = struct.pack("!BBHHH", kind, 0, 0, 0x5ec, 1) + token + bytes(12 if kind == 13 else 0)
    if v4:   # IPv4 raw ICMP carries the checksum we compute; the kernel fills in ICMPv6's
        total = sum(struct.unpack(f"!{len(body) // 2}H", body))
        total = (total & 0xFFFF) + (total >> 16)
        body = body[:2] + struct.pack("!H", ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF) + body[4:]
    with ns_socket(outside.ns, fam, socket.SOCK_RAW, proto) as sniff, \
            ns_socket(src.ns, fam, socket.SOCK_RAW, proto) as send:
        sniff.settimeout(0.2)
        send.sendto(body, (address, 0))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data = sniff.recv(2048)
            except socket.timeout:
                continue
            if token in data and data[(20 if v4 else 0)] == kind:   # IPv4 raw sockets get the header
                return True
    return False


def test_a_learned_icmp_rule_allows_echo_requests_only_as_every_icmp_rule(lab):
    """``dns(NAME):icmp`` is echo requests, as ``10.0.0.0/8:icmp`` (nftables' learned
    icmp elements used to match every ICMP type; eBPF allowed echo only)."""
    rig, web, _api = _rig(lab, "web->dns(ping.example.test):icmp")
    try:
        rig.server.add("ping.example.test", "A", 300, "10.238.0.10")
        rig.server.add("ping.example.test", "AAAA", 300, "fd00:238::10")
        # a timestamp request (IPv4) and a node information query (IPv6): not echo,
        # each tracked by conntrack as a new flow with a reply type
        for address, echo, other in (("10.238.0.10", 8, 13), ("fd00:238::10", 128, 139)):
            assert not _icmp_arrives(web, lab.outside, address, echo)   # nothing learned yet
            assert resolve(web, "ping.example.test", "A" if echo == 8 else "AAAA") == [address]
            assert probe_icmp(web, address) == "ok"
            assert _icmp_arrives(web, lab.outside, address, echo)
            assert not _icmp_arrives(web, lab.outside, address, other)
    finally:
        rig.close()
