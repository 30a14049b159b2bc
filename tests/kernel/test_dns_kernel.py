"""DNS-name rules with real packets: answers held in an NFQUEUE until learned.

Every test builds its own namespaces (``dns_lab``): containers c0 (web) and
c1 (api) behind a router namespace, a DNS server (dnspython) and AnyIP echo
servers in namespaces of their own. Egress is denied except DNS to the
server and what the learned sets allow.
"""
import time

import pytest

from plugin.dns.store import LearnedStore
from tests.kernel.dns_lab import DNS6, IDS, NET, DnsLab

RULES = ("web->dns(api.example.test):tcp/443 web->dns(*.wild.test):tcp/443 "
         "web->dns(alias.example.test):tcp")


@pytest.fixture
def lab(tmp_path):
    the_lab = DnsLab(tmp_path, min_ttl=60)
    try:
        the_lab.setup()
        server = the_lab.server
        server.add("api.example.test", "A", 300, "10.229.0.5")
        server.add("api.example.test", "AAAA", 300, "fd00:229::5")
        server.add("other.example.test", "A", 300, "10.229.0.6")
        server.add("a.wild.test", "A", 300, "10.229.0.8")
        server.add("wild.test", "A", 300, "10.229.0.9")
        server.add("alias.example.test", "CNAME", 300, "edge.cdn.test.")
        server.add("edge.cdn.test", "CNAME", 300, "e1.cdn.test.")
        server.add("e1.cdn.test", "A", 300, "10.229.0.7")
        yield the_lab
    finally:
        the_lab.close()


def test_exact_name_is_allowed_only_after_the_answer_and_only_its_service(lab):
    lab.start_learning(RULES)
    assert lab.connect("web", "10.229.0.5") == "timeout"          # nothing learned yet
    assert lab.resolve("web", "api.example.test") == ["10.229.0.5"]
    assert lab.connect("web", "10.229.0.5") == "ok"
    assert lab.connect("web", "10.229.0.5", 80) == "timeout"      # the rule says tcp/443
    elements = lab.elements()
    assert [(g.identity, g.address, g.proto, g.lo, g.hi, g.name) for g in elements] == [
        (IDS["web"], "10.229.0.5", "tcp", 443, 443, "api.example.test")]
    assert 290 <= elements[0].expires - time.time() <= 301


def test_other_names_and_wildcard_parent_teach_nothing(lab):
    lab.start_learning(RULES)
    assert lab.resolve("web", "other.example.test") == ["10.229.0.6"]
    assert lab.resolve("web", "wild.test") == ["10.229.0.9"]
    assert lab.resolve("web", "A.Wild.TEST") == ["10.229.0.8"]
    assert lab.connect("web", "10.229.0.6") == "timeout"
    assert lab.connect("web", "10.229.0.9") == "timeout"
    assert lab.connect("web", "10.229.0.8") == "ok"
    assert {g.address for g in lab.elements()} == {"10.229.0.8"}


def test_cname_chain_is_followed(lab):
    lab.start_learning(RULES)
    assert lab.resolve("web", "alias.example.test") == ["10.229.0.7"]
    assert lab.connect("web", "10.229.0.7", 80) == "ok"          # dns(alias...):tcp = every port
    assert [g.name for g in lab.elements()] == ["alias.example.test"]


def test_ipv6_and_tcp_answers_and_an_ipv6_server(lab):
    lab.start_learning(RULES)
    assert lab.resolve("web", "api.example.test", "AAAA", tcp=True) == ["fd00:229::5"]
    assert lab.connect("web", "fd00:229::5") == "ok"
    assert lab.resolve("web", "api.example.test", server=DNS6) == ["10.229.0.5"]
    assert lab.connect("web", "10.229.0.5") == "ok"


def test_another_segment_cannot_use_the_first_segments_answer(lab):
    lab.start_learning(RULES + " api->dns(other.example.test):tcp/443")
    assert lab.resolve("web", "api.example.test") == ["10.229.0.5"]
    assert lab.connect("web", "10.229.0.5") == "ok"
    assert lab.connect("api", "10.229.0.5") == "timeout"
    assert lab.resolve("api", "api.example.test") == ["10.229.0.5"]   # not api's rule
    assert lab.connect("api", "10.229.0.5") == "timeout"
    assert lab.resolve("api", "other.example.test") == ["10.229.0.6"]
    assert lab.connect("api", "10.229.0.6") == "ok"
    assert lab.connect("web", "10.229.0.6") == "timeout"


def test_first_connection_right_after_the_answer_never_races(lab):
    lab.start_learning("web->dns(*.many.test):tcp/443")
    for i in range(100):
        lab.server.add(f"n{i}.many.test", "A", 300, f"10.229.1.{i + 1}")
    failures = []
    for i in range(100):
        (address,) = lab.resolve("web", f"n{i}.many.test")
        outcome = lab.connect("web", address, timeout=0.5)
        if outcome != "ok":
            failures.append((address, outcome))
    assert failures == []
    assert len(lab.elements()) == 100


def test_expiry_ends_new_flows_but_not_open_ones(tmp_path):
    lab = DnsLab(tmp_path, min_ttl=1)
    try:
        lab.setup()
        lab.server.add("short.example.test", "A", 2, "10.229.0.20")
        lab.start_learning("web->dns(short.example.test):tcp/443")
        assert lab.resolve("web", "short.example.test") == ["10.229.0.20"]
        conn = lab.open_connection("web", "10.229.0.20")
        try:
            time.sleep(3.5)
            assert lab.connect("web", "10.229.0.20") == "timeout"
            assert lab.elements() == []
            conn.sendall(b"still")
            assert conn.recv(16) == b"still"
        finally:
            conn.close()
        assert lab.store.current(NET) == {}
    finally:
        lab.close()


def test_refresh_extends_and_shortens_nothing_it_should_not(lab):
    lab.start_learning(RULES)
    lab.resolve("web", "api.example.test")
    first = lab.elements()[0].expires
    time.sleep(1.1)
    lab.resolve("web", "api.example.test")
    assert lab.elements()[0].expires >= first + 1
    assert len(lab.elements()) == 1


def test_answers_are_dropped_while_nobody_reads_the_queue(lab):
    lab.start_learning(RULES)
    lab.stop_learning()
    with pytest.raises(Exception):
        lab.resolve("web", "api.example.test", timeout=1.0)
    assert lab.connect("web", "10.229.0.5") == "timeout"
    # a segment without DNS rules is not queued: it resolves while the daemon is down
    assert lab.resolve("api", "api.example.test", timeout=1.0) == ["10.229.0.5"]
    assert lab.resolve("api", "api.example.test", tcp=True, timeout=1.0) == ["10.229.0.5"]


def test_bound_refuses_new_addresses_fail_closed(tmp_path):
    lab = DnsLab(tmp_path, max_per_network=2)
    try:
        lab.setup()
        for i in range(3):
            lab.server.add(f"b{i}.example.test", "A", 300, f"10.229.2.{i + 1}")
        lab.start_learning("web->dns(*.example.test):tcp/443")
        for i in range(3):
            assert lab.resolve("web", f"b{i}.example.test") == [f"10.229.2.{i + 1}"]
        assert [lab.connect("web", f"10.229.2.{i + 1}") for i in range(3)] == ["ok", "ok", "timeout"]
        assert lab.store.refused_total == 1 and len(lab.store) == 2
    finally:
        lab.close()


def test_restart_adopts_what_the_kernel_holds_and_removed_rules_are_revoked(lab):
    lab.start_learning(RULES)
    lab.resolve("web", "api.example.test")
    lab.resolve("web", "alias.example.test")
    first = lab.store.current(NET)[(IDS["web"], "web->dns(api.example.test):tcp/443")]["10.229.0.5"]
    lab.stop_learning()
    time.sleep(1.5)
    lab.start_learning(RULES, store=LearnedStore())          # a daemon restart
    assert lab.learner.restore(NET, lab.fqdns) == 2
    current = lab.store.current(NET)
    assert set(current) == {(IDS["web"], "web->dns(api.example.test):tcp/443"),
                            (IDS["web"], "web->dns(alias.example.test):tcp")}
    again = current[(IDS["web"], "web->dns(api.example.test):tcp/443")]["10.229.0.5"]
    assert again.name == "api.example.test"
    assert abs(again.learned - first.learned) <= 1.01 and abs(again.expires - first.expires) <= 1.01
    assert lab.connect("web", "10.229.0.5") == "ok"
    lab.fqdns = lab.targets.set_policy("web->dns(alias.example.test):tcp")
    lab.learner.policy_changed(NET, lab.fqdns)
    assert lab.connect("web", "10.229.0.5") == "timeout"
    assert [g.address for g in lab.elements()] == ["10.229.0.7"]


def test_the_service_wires_queue_rules_targets_and_the_read_side(lab):
    from plugin.dns.views import dns_rows
    from segmentation.options import NetworkOptions
    from segmentation.rules import parse_rules

    assert lab.queue_rule_count() == 0
    rules = "web->dns(api.example.test):tcp/443 api->dns(*.wild.test):tcp/443"
    service = lab.start_service(rules)
    assert lab.queue_rule_count() == 4                        # FORWARD, OUTPUT x udp, tcp
    assert lab.resolve("web", "api.example.test") == ["10.229.0.5"]
    assert lab.resolve("api", "a.wild.test") == ["10.229.0.8"]
    assert lab.connect("web", "10.229.0.5") == "ok" and lab.connect("api", "10.229.0.8") == "ok"
    assert lab.connect("api", "10.229.0.5") == "timeout" and lab.connect("web", "10.229.0.8") == "timeout"
    rows = dns_rows(NetworkOptions(rules=parse_rules(rules)), service.learned(NET))
    assert [[(a["segment"], a["address"], a["name"]) for a in r["addresses"]] for r in rows] == [
        [("web", "10.229.0.5", "api.example.test")], [("api", "10.229.0.8", "a.wild.test")]]
    lab.set_service_policy("api->dns(*.wild.test):tcp/443")   # web's rule removed: revoked at once
    assert lab.connect("web", "10.229.0.5") == "timeout"
    lab.set_service_policy("web->api:tcp/80")                  # no DNS rule left: no queue rule
    assert lab.queue_rule_count() == 0 and lab.elements() == []
    service.removed(NET)


def test_a_server_on_the_host_itself_is_seen_too(lab):
    from tests.kernel.dns_lab import DnsServer
    host_server = DnsServer(lab.host, addresses=("10.227.0.1",))     # answers leave through OUTPUT
    try:
        host_server.zone = lab.server.zone
        lab.start_learning(RULES)
        assert lab.resolve("web", "api.example.test", server="10.227.0.1") == ["10.229.0.5"]
        assert lab.connect("web", "10.229.0.5") == "ok"
    finally:
        host_server.stop()


def test_a_query_flow_older_than_the_rule_is_still_queued(lab):
    # the same UDP 5-tuple before and after the segment gets its DNS rule:
    # conntrack keeps one entry, and the mark must follow the policy anyway
    lab.start_learning("api->dns(other.example.test):tcp/443")          # web has no DNS rule yet
    assert lab.resolve("web", "api.example.test", sport=40053) == ["10.229.0.5"]
    lab.stop_learning()
    lab.start_learning(RULES)
    assert lab.resolve("web", "api.example.test", sport=40053) == ["10.229.0.5"]
    assert lab.connect("web", "10.229.0.5") == "ok"


def test_a_tcp_answer_over_several_segments_is_learned_whole(lab):
    addresses = [f"10.229.3.{i}" for i in range(1, 151)]         # ~2.5 KB: more than one segment
    lab.server.add("big.example.test", "A", 300, *addresses)
    lab.start_learning("web->dns(big.example.test):tcp/443")
    assert sorted(lab.resolve("web", "big.example.test", tcp=True)) == sorted(addresses)
    assert lab.connect("web", addresses[-1]) == "ok" and lab.connect("web", addresses[0]) == "ok"
    assert len(lab.elements()) == 150


def test_reapply_after_the_sets_were_flushed(lab):
    service = lab.start_service("web->dns(api.example.test):tcp/443 web->dns(alias.example.test):tcp")
    lab.resolve("web", "api.example.test")
    lab.resolve("web", "alias.example.test")
    for name in ("fqdn4_port", "fqdn4_proto"):
        lab.runner.apply(f"flush set inet sdnstest {name}\n")                # drift
    assert lab.connect("web", "10.229.0.5") == "timeout"
    assert service.reapply(NET) == 2
    assert lab.connect("web", "10.229.0.5") == "ok" and lab.connect("web", "10.229.0.7", 80) == "ok"


def test_every_set_kind_with_real_packets(lab):
    import subprocess
    lab.start_learning("web->dns(other.example.test) web->dns(a.wild.test):tcp/400-500 "
                       "web->dns(wild.test):icmp")
    for name in ("other.example.test", "a.wild.test", "wild.test"):
        lab.resolve("web", name)
    ping = lambda addr: subprocess.run(["ip", "netns", "exec", lab.c["web"], "ping", "-c1", "-W1", addr],
                                       capture_output=True).returncode == 0
    assert lab.connect("web", "10.229.0.6", 80) == "ok" and lab.connect("web", "10.229.0.6") == "ok"
    assert ping("10.229.0.6")                                            # any
    assert lab.connect("web", "10.229.0.8") == "ok"                      # 443 in 400-500
    assert lab.connect("web", "10.229.0.8", 80) == "timeout" and not ping("10.229.0.8")
    assert ping("10.229.0.9") and lab.connect("web", "10.229.0.9") == "timeout"   # icmp only
    kinds = {(g.address, g.proto, g.lo, g.hi) for g in lab.elements()}
    assert kinds == {("10.229.0.6", "any", 0, 0), ("10.229.0.8", "tcp", 400, 500),
                     ("10.229.0.9", "icmp", 0, 0)}
