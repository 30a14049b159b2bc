"""Policy as data in a real kernel: edits are element deltas in one transaction,
overlapping ranges keep their attribution, audit mode is a setting element,
drift is found rule by rule and element by element, and the tables missing
fails closed behind Docker's DOCKER-USER chain."""
from __future__ import annotations

import json
import queue
import socket
import struct
import subprocess
import time

import pytest

from nsfixtures import BACKENDS, NET_ID, InNamespace, lab  # noqa: F401  (lab is a fixture)
from packets import Sniffer, mac_bytes, parallel, probe_tcp, send_frame
from plugin.kernel.dockerfw import DockerFirewall
from segmentation.options import parse_network_options
from segmentation.policymap import PolicyEntry

pytestmark = pytest.mark.kernel


def rules_text(lab) -> str:
    """Both tables' rules and set declarations, without elements and counter values."""
    return "".join(lab.nft("-t", "-s", "list", "table", fam, lab.table).stdout for fam in ("inet", "bridge"))


class Generations:
    """Counts the transactions committed in the lab's namespace (``nft monitor``)."""

    def __init__(self, lab):
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.host, "nft", "monitor"],
                                     stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)

    def stop(self) -> list:
        time.sleep(0.3)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=5)
        return out.splitlines()


def ids(lab) -> dict:
    return lab.allocator.identities(NET_ID)


# --- edits are elements -----------------------------------------------------------------

def test_one_rule_edit_is_one_transaction_of_elements(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    before = rules_text(lab)
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432)] == ["ok", "timeout"]
    watch = Generations(lab)
    lab.update("web->api:tcp/8080 web->api:tcp/5432")
    lines = watch.stop()
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432)] == ["ok", "ok"]
    assert rules_text(lab) == before                      # no rule changed
    assert sum("new generation" in line for line in lines) == 1, lines
    changes = [line for line in lines if line.startswith(("add", "delete"))]
    assert changes and all(" element " in line for line in changes), changes


def test_a_new_segment_and_a_join_change_only_elements(lab):
    web, api, db = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    before = rules_text(lab)
    lab.update("web->api:tcp/8080 web->db:tcp/5432")    # db: a segment nobody was in
    lab.move(db, "db")
    assert [probe_tcp(web, db.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
    lab.update(mode="audit")
    lab.update(mode="enforce", egress="deny")
    assert rules_text(lab) == before


def test_overlapping_ranges_are_cut_and_counted_per_rule(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/5000-8080 web->api:tcp/8080-9999", {web: "web", api: "api"}, intra="deny")
    w, a = ids(lab)["web"], ids(lab)["api"]
    low, high = (w, a, "tcp", 5000, 8080), (w, a, "tcp", 8080, 9999)
    pieces = lab.nft("list", "set", "inet", lab.table, "pol_range").stdout
    for piece in ("5000-8079", "8080 ", "8081-9999"):
        assert piece in pieces, pieces
    assert parallel(probe_tcp, [(web, api.ip4, p) for p in (5432, 8080, 9999)]) == ["ok"] * 3
    counters = lab.backend.counters(lab.net)
    assert counters.allowed[low][0] > 0 and counters.allowed[high][0] > 0
    assert counters.allowed[low] == counters.allowed[high]   # 5432+8080 and 8080+9999: same packets
    lab.update("web->api:tcp/8080-9999")
    assert parallel(probe_tcp, [(web, api.ip4, p) for p in (5432, 8080, 9999)]) == ["timeout", "ok", "ok"]
    assert "5000" not in lab.nft("list", "set", "inet", lab.table, "pol_range").stdout
    assert lab.drift() == []


def test_counters_map_back_to_policy_keys_and_pairs(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    w, a = ids(lab)["web"], ids(lab)["api"]
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert probe_tcp(web, api.ip4, 5432) == "timeout"
    counters = lab.backend.counters(lab.net)
    key = PolicyEntry(w, a, "tcp", 8080, 8080, "web->api:tcp/8080").key
    assert counters.allowed[key][0] >= 1 and counters.allowed[key][1] > 0
    assert counters.dropped[(w, a)][0] >= 1
    assert counters.reasons["no-rule"][0] >= 1
    assert not counters.would_drop


# --- audit mode ---------------------------------------------------------------------------

def test_audit_mode_lets_policy_drops_pass_and_reports_them(lab):
    web, api, bad = lab.add(3)
    events: queue.Queue = queue.Queue()
    lab.backend.watch_drops(events.put)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny", mode="audit")
    lab.move(bad, None, quarantine="empty label")
    time.sleep(0.5)   # the reader binds its group
    assert parallel(probe_tcp, [(web, api.ip4, 5432), (api, web.ip4, 8080), (bad, api.ip4, 8080)]) \
        == ["ok", "ok", "ok"]
    got = drain(events, 1.0)
    seen = {(e.reason, e.audit, e.dst, e.port) for e in got if e.proto == 6}
    assert ("no-rule", True, api.ip4, 5432) in seen, got
    assert ("quarantined", True, api.ip4, 8080) in seen, got
    spoof_seen = spoofed_frame_arrives(web, api, "10.236.0.250")
    counters = lab.backend.counters(lab.net)
    assert counters.would_drop[(ids(lab)["web"], ids(lab)["api"])][0] >= 1
    assert counters.would_drop_reasons["no-rule"][0] >= 1 and counters.reasons["no-rule"][0] == 0
    before = rules_text(lab)
    lab.update(mode="enforce")
    assert rules_text(lab) == before
    assert parallel(probe_tcp, [(web, api.ip4, 5432), (api, web.ip4, 8080), (bad, api.ip4, 8080),
                                (web, api.ip4, 8080)]) == ["timeout", "timeout", "timeout", "ok"]
    assert {(e.reason, e.audit) for e in drain(events, 1.0) if e.proto == 6} >= {
        ("no-rule", False), ("quarantined", False)}
    assert not spoof_seen, "a spoofed frame passed in audit mode"
    assert lab.counter("bridge", "deny:spoofed") >= 1


def spoofed_frame_arrives(src, dst, fake: str) -> bool:
    """Send one UDP frame from ``src`` with source address ``fake``; did ``dst`` see it?"""
    udp = struct.pack("!HHHH", 4000, 7, 9, 0) + b"spoof"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(fake), socket.inet_aton(dst.ip4))
    frame = mac_bytes(dst.mac) + mac_bytes(src.mac) + b"\x08\x00" + ip + udp
    sniffer = Sniffer(dst)
    try:
        send_frame(src, frame)
        return any(b"spoof" in f for f in sniffer.frames(0.5))
    finally:
        sniffer.close()


def drain(q: queue.Queue, wait: float) -> list:
    out, deadline = [], time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(q.get(timeout=left))
        except queue.Empty:
            break
    return out


# --- drift --------------------------------------------------------------------------------

def handle_of(lab, family: str, chain: str, text: str) -> int:
    data = json.loads(lab.nft("-j", "-a", "list", "chain", family, lab.table, chain).stdout)
    listing = lab.nft("-a", "list", "chain", family, lab.table, chain).stdout
    line = next(line for line in listing.splitlines() if text in line)
    handle = int(line.rsplit("# handle", 1)[1])
    assert any(o.get("rule", {}).get("handle") == handle for o in data["nftables"])
    return handle


def test_drift_finds_a_changed_rule_and_apply_network_repairs_it(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    assert lab.drift() == []
    handle = handle_of(lab, "inet", "forward", "ip protocol igmp")
    # same number of rules, one of them now lets a port through
    lab.nft("replace", "rule", "inet", lab.table, "forward", "handle", str(handle),
            "tcp", "dport", "9999", "goto", "pass")
    assert probe_tcp(web, api.ip4, 9999) == "ok"
    problems = lab.drift()
    assert any("forward" in p for p in problems), problems
    lab.backend.apply_network(lab.net, lab.policy, lab.ports())
    assert lab.drift() == []
    assert probe_tcp(web, api.ip4, 9999) == "timeout"


def test_drift_finds_a_deleted_element_and_a_delta_after_it_repairs(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    w, a = ids(lab)["web"], ids(lab)["api"]
    lab.nft("delete", "element", "inet", lab.table, "pol_port", f"{{ {w:#x} . {a:#x} . tcp . 8080 }}")
    assert probe_tcp(web, api.ip4, 8080) == "timeout"
    problems = lab.drift()
    assert problems and all("pol_port" in p and "missing" in p for p in problems), problems
    lab.update("web->api:tcp/5432", repair_ok=True)   # deleting 8080 is refused: it rebuilds
    assert lab.backend.repairs == 1
    assert lab.drift() == []
    assert [probe_tcp(web, api.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]


def test_drift_reports_missing_tables(lab):
    web, = lab.add(1)
    lab.apply("", {web: "web"})
    lab.nft("delete", "table", "bridge", lab.table)
    assert any("missing" in p for p in lab.drift())


# --- fail closed behind Docker's DOCKER-USER ------------------------------------------------

def test_tables_missing_fail_closed_behind_docker_user(lab):
    """With Docker's FORWARD policy DROP and secnet's DOCKER-USER rules, only what
    secnet's chain marked passes: without its tables, nothing does."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    for binary in ("iptables", "ip6tables"):
        lab.exec(binary, "-P", "FORWARD", "DROP")
    fw = InNamespace(lab.host, DockerFirewall)
    try:
        fw.ensure("snbr0", NET_ID)
        assert [probe_tcp(web, api.ip(f), 8080) for f in (4, 6)] == ["ok", "ok"]
        for family in ("inet", "bridge"):
            lab.nft("delete", "table", family, lab.table)
        assert [probe_tcp(web, api.ip(f), 8080) for f in (4, 6)] == ["timeout", "timeout"]
    finally:
        fw.shutdown_plain()


def test_a_new_backend_checks_tables_an_earlier_one_wrote(lab):
    """After a daemon restart: nothing to repair when nothing changed, and a changed
    rule is still found (the reference comes from a scratch namespace)."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    fresh = InNamespace(lab.host, BACKENDS["nftables"])
    try:
        assert fresh.drift(lab.net, lab.policy, lab.ports()) == []
        handle = handle_of(lab, "bridge", "spoofing", "ether type arp return")
        lab.nft("delete", "rule", "bridge", lab.table, "spoofing", "handle", str(handle))
        assert any("spoofing" in p for p in fresh.drift(lab.net, lab.policy, lab.ports()))
    finally:
        fresh.shutdown()


def test_without_netlink_deltas_drift_and_counters_go_through_nft(lab):
    """The fallback path (nft scripts and JSON listings) gives the same answers."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    text = InNamespace(lab.host, lambda: BACKENDS["nftables"](netlink=False))
    try:
        text.apply_network(lab.net, lab.policy, lab.ports())
        old = lab.policy
        new = lab.compile(_with_rules(lab, "web->api:tcp/5000-5500 web->10.237.0.0/24:tcp/8080"), {})
        text.apply_policy(lab.net, old.delta(new))
        assert text.repairs == 0 and text.drift(lab.net, new, lab.ports()) == []
        assert [probe_tcp(web, api.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
        counters = text.counters(lab.net)
        assert sum(pk for pk, _b in counters.allowed.values()) >= 1
        assert counters.dropped[(ids(lab)["web"], ids(lab)["api"])][0] >= 1
        lab.nft("flush", "set", "inet", lab.table, "pol_range")
        assert any("pol_range" in p for p in text.drift(lab.net, new, lab.ports()))
    finally:
        text.shutdown()


def _with_rules(lab, rules: str):
    return parse_network_options({"secnet.allow": rules, "secnet.intra": "deny"})


def test_a_join_that_brings_a_new_segment_is_one_transaction(lab):
    web, api, db = lab.add(3)
    lab.apply("web->*:tcp/5432", {web: "web", api: "api"}, intra="deny")
    new = lab.compile(lab.options, {web: "web", api: "api", db: "db"})   # allocates db's identity
    lab.policy, delta = new, lab.policy.delta(new)
    lab.members[db] = lab.port(db, "db")
    watch = Generations(lab)
    lab.backend.apply_policy(lab.net, delta, [(None, lab.members[db])])
    lines = watch.stop()
    assert sum("new generation" in line for line in lines) == 1, lines
    assert [probe_tcp(web, db.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
    assert lab.drift() == []
