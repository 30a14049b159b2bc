"""DNS rules on the read side (show, explain) and the DnsService bookkeeping, without a kernel."""
import re

from plugin.cli.format import print_dns_rules, print_explain
from plugin.dns.service import DnsService
from plugin.dns.views import dns_rows
from plugin.enforce.backend import Port
from plugin.observe.explain import explain
from segmentation.compiler import compile_policy
from segmentation.fqdn import Address, Learned
from segmentation.model import Member
from segmentation.options import parse_network_options
from segmentation.policymap import compile_policy_map
from tests.unit.test_explain import ENDPOINTS
from tests.unit.test_visibility_api import NID, env  # noqa: F401  (the route fixture)

RULE = "web->dns(api.example.test):tcp/443"
OPTIONS = parse_network_options({"secnet.allow": f"{RULE} web->api:tcp/8080 *->dns(*.cdn.test)",
                                 "secnet.egress": "deny"})
ANSWER = Learned("10.229.0.5", "api.example.test", 1000.0, 1300.0)
LEARNED = {("web", RULE): {"10.229.0.5": ANSWER}}


def compiled():
    return compile_policy(OPTIONS, [Member(e.id, e.segment, None, None, e.quarantine) for e in ENDPOINTS])


def test_explain_names_the_rule_and_the_answer(capsys):
    result = explain(compiled(), ENDPOINTS, "web1", "10.229.0.5", "tcp/443", learned=LEARNED)
    assert result["allowed"] and result["rule"] == RULE
    assert result["answer"] == {"address": "10.229.0.5", "name": "api.example.test",
                                "learned": 1000.0, "expires": 1300.0}
    print_explain(result)
    out = capsys.readouterr().out
    assert f"rule: {RULE}" in out and "dns: api.example.test answered 10.229.0.5 at " in out


def test_explain_without_the_answer_denies_as_before():
    for learned in (None, {}, {("api", RULE): {"10.229.0.5": ANSWER}}):
        result = explain(compiled(), ENDPOINTS, "web1", "10.229.0.5", "tcp/443", learned=learned)
        assert not result["allowed"] and result["reason"] == "egress denied"
        assert result["answer"] is None


def test_show_rows_and_text(capsys):
    rows = dns_rows(OPTIONS, LEARNED)
    assert rows == [{"rule": RULE, "addresses": [{"segment": "web", "address": "10.229.0.5",
                                                  "name": "api.example.test", "learned": 1000.0,
                                                  "expires": 1300.0}]},
                    {"rule": "*->dns(*.cdn.test)", "addresses": []}]
    print_dns_rules(rows, now=1100.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dns names")
    assert lines[1].strip() == RULE
    assert re.search(r"web +10\.229\.0\.5 +api\.example\.test +expires .*\(in 200s\)", lines[2])
    assert lines[4].strip() == "(no address learned)"


class Marks:
    queue_num = 7

    def __init__(self):
        self.addresses, self.calls = set(), 0

    def change(self, added, removed):
        self.addresses = (self.addresses | set(added)) - set(removed)
        self.calls += 1


class Datapath:
    def __init__(self):
        self.revoked = []

    def allow(self, net, grants):
        pass

    def revoke(self, net, keys):
        self.revoked += keys

    def learned(self, net):
        return []


def test_service_targets_marks_and_learned_by_segment():
    marks, datapath = Marks(), Datapath()
    service = DnsService(marks)
    ids = {"web": 257, "api": 258, "default": 256}
    pm = compile_policy_map(OPTIONS, ids)
    ports = [Port("e1", "snv1", "02:00:00:00:00:01", "10.224.0.2", "fd00:224::2", identity=257),
             Port("e2", "snv2", "02:00:00:00:00:02", "10.224.0.3", identity=258),
             Port("e3", "snv3", "02:00:00:00:00:03", "10.224.0.4", identity=3)]   # pending
    service.network("n1", "snbr", pm, ports[:1], datapath)
    assert marks.addresses == {"10.224.0.2", "fd00:224::2"}     # web has DNS rules
    assert service.target(0, "10.224.0.3") is None
    service.ports("n1", [(None, ports[1]), (None, ports[2])])      # joins, by delta
    assert service.target(0, "10.224.0.3").identity == 258
    assert marks.addresses == {"10.224.0.2", "fd00:224::2", "10.224.0.3"}  # * names api; pending: no
    service.ports("n1", [(ports[1], None)])
    assert service.target(0, "10.224.0.3") is None and "10.224.0.3" not in marks.addresses
    calls = marks.calls
    service.network("n1", "snbr", pm, ports)
    service.network("n1", "snbr", pm, ports)                       # nothing changed: no mark work
    assert marks.calls == calls + 1
    web = service.target(0, "fd00:224::2")
    assert web.identity == 257 and {e.rule for e in web.entries} == {RULE, "*->dns(*.cdn.test)"}
    assert {e.rule for e in service.target(0, "10.224.0.3").entries} == {"*->dns(*.cdn.test)"}
    assert service.target(0, "10.224.0.9") is None
    (entry,) = [e for e in web.entries if e.rule == RULE]
    service.store.commit(service.store.plan("n1", [(entry, Address("10.229.0.5", 4, 300,
                                                                   ("api.example.test",)))]))
    assert set(service.learned("n1")) == {("web", RULE)}
    assert service.status()["learned"] == 1 and service.status()["queue"] == 7
    service.network("n1", "snbr", compile_policy_map(parse_network_options({}), ids), ports)
    assert marks.addresses == set() and datapath.revoked == [(257, "10.229.0.5", "tcp", 443, 443)]
    service.removed("n1")
    assert service.target(0, "10.224.0.2") is None
    service.close()


class FakeDns:
    def status(self):
        return {"queue": 7, "answers": 12, "learned": 3, "refused": 1, "failures": 0,
                "budget_drops": 40, "queue_lost": 2, "queue_dropped": 0,
                "bound_per_segment": 4096, "bound_per_network": 16384, "bound_total": 65536}

    def learned(self, network_id):
        return {}


def test_status_and_metrics_report_dns_learning(env, capsys):
    from plugin.cli.main import _print_status

    assert "dns" not in env.post("status", {})[1]
    env.reconciler.dns = FakeDns()
    status, data = env.post("status", {})
    assert status == 200 and data["dns"]["learned"] == 3
    _print_status(data)
    out = capsys.readouterr().out
    assert ("dns: 3 address(es) learned from 12 answer(s); 1 refused at the bound (4096 per segment, "
            "16384 per network, 65536 in all)") in out
    assert ("dns: answers dropped before learning: 40 over a destination's budget, 2 queue overflow(s), "
            "0 cut") in out
    samples = {s["name"]: s["value"] for s in env.post("metrics", {})[1]["samples"]}
    assert samples["secnet_dns_learned"] == 3 and samples["secnet_dns_refused_total"] == 1
    assert samples["secnet_dns_budget_drops_total"] == 40 and samples["secnet_dns_queue_lost_total"] == 2
    assert samples["secnet_dns_answers_total"] == 12
    assert env.post("show", {"network": NID})[1]["dns"] == []


def test_service_rebuilds_targets_only_when_ports_or_dns_rules_differ(monkeypatch):
    # A join that brings a new segment sends the network's whole policy again; with
    # the same DNS rules and the ports the service already follows, nothing is rebuilt.
    service = DnsService(Marks())
    ids = {"web": 257, "api": 258, "default": 256}
    options = parse_network_options({"secnet.allow": RULE})   # names web only
    pm = compile_policy_map(options, ids)
    ports = [Port("e1", "snv1", "02:00:00:00:00:01", "10.224.0.2", "fd00:224::2", identity=257),
             Port("e2", "snv2", "02:00:00:00:00:02", "10.224.0.3", identity=258)]
    service.network("n1", "snbr", pm, ports, Datapath())
    rebuilt = []
    real = service._rebuild_targets
    monkeypatch.setattr(service, "_rebuild_targets", lambda *args: (rebuilt.append(args[0]), real(*args)))
    service.network("n1", "snbr", compile_policy_map(options, {**ids, "new": 259}), ports)
    assert rebuilt == []
    moved = [ports[0], Port("e2", "snv2", "02:00:00:00:00:02", "10.224.0.3", identity=257)]
    service.network("n1", "snbr", pm, moved)                     # a port with another identity
    assert rebuilt == ["n1"] and service.target(0, "10.224.0.3").identity == 257
    service.network("n1", "snbr", pm, moved[:1])                 # a port fewer
    assert rebuilt == ["n1", "n1"] and service.target(0, "10.224.0.3") is None
    service.network("n1", "snbr", compile_policy_map(parse_network_options({}), ids), moved[:1])
    assert len(rebuilt) == 3                                      # other DNS rules
    service.close()


def test_service_takes_a_policy_without_dns_changes_without_a_rebuild(monkeypatch):
    service = DnsService(Marks())
    ids = {"web": 257, "default": 256}
    options = parse_network_options({"secnet.allow": RULE})
    ports = [Port("e1", "snv1", "02:00:00:00:00:01", "10.224.0.2", identity=257)]
    service.network("n1", "snbr", compile_policy_map(options, ids), ports, Datapath())
    rebuilt = []
    monkeypatch.setattr(service, "_rebuild_targets", lambda *args: rebuilt.append(args[0]))
    service.policy("n1", compile_policy_map(options, {**ids, "new": 258}))   # a new segment
    service.policy("n2", compile_policy_map(options, ids))                  # never told: ignored
    assert rebuilt == [] and service.target(0, "10.224.0.2").identity == 257
    assert service.learned("n2") == {}
    (entry,) = [e for e in service.target(0, "10.224.0.2").entries if e.rule == RULE]
    service.store.commit(service.store.plan("n1", [(entry, Address("10.229.0.5", 4, 300, ("api.example.test",)))]))
    assert set(service.learned("n1")) == {("web", RULE)}
    service.close()
