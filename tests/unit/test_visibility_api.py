"""The daemon's visibility routes (/secnet/log, explain, verify, metrics) and the
metrics collector, on a real State and a stand-in reconciler with neutral counters;
the CLI's output."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from plugin.cli import format as cli_format

from plugin.observe import verify
from plugin.daemon.api import Api
from plugin.daemon.app import create_app
from plugin.observe.droplog import DropLog
from plugin.observe.metrics import Metrics, parse_addr
from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.backend import Counters
from plugin.observe.counting import OUTSIDE
from segmentation.compiler import compile_policy
from segmentation.identities import OUTSIDE as OUTSIDE_ID
from segmentation.model import Member
from segmentation.options import parse_network_options

NID = "ef" * 32
RULES = "web->api:tcp/8080 api->db:tcp/5432"


class FakeReconciler:
    """compiled() from the saved endpoints; counters() as a backend would report them."""

    repairs = 3

    def __init__(self, state):
        self.state = state

    def compiled(self, net):
        members = [Member(e.id, e.segment, e.ipv4.split("/")[0], None, e.quarantine)
                   for e in self.state.endpoints(net.id)]
        return compile_policy(parse_network_options({"secnet.allow": RULES}), members)

    def counters(self, net):
        ids = self.compiled(net).identities
        web_api = next(e.key for e in self.compiled(net).entries if e.rule == "web->api:tcp/8080")
        return Counters(allowed={web_api: (5, 300)},
                        dropped={(ids["web"], ids["db"]): (7, 420), (ids["db"], OUTSIDE_ID): (2, 80)},
                        reasons={"no-rule": (7, 420), "spoofed": (1, 60)})


def ep(n, name, segment, quarantine=None, sandbox=None):
    return EndpointRecord(id=str(n) * 64, network_id=NID, veth_host=f"snv{n}", veth_peer=f"snp{n}",
                          mac="02:00:00:00:00:01", ipv4=f"10.224.0.{n + 1}/24", segment=segment,
                          quarantine=quarantine, container=name, sandbox_key=sandbox)


@pytest.fixture
def env(tmp_path):
    state = State(str(tmp_path / "state"))
    state.put_network(NetworkRecord(id=NID, bridge="sn-x", mtu=1500,
                                    options=parse_network_options({"secnet.allow": RULES})))
    state.put_endpoints([ep(1, "web1", "web"), ep(2, "api1", "api"), ep(3, "db1", "db"),
                         ep(4, "bad1", None, quarantine="empty label")])
    reconciler = FakeReconciler(state)
    droplog = DropLog(str(tmp_path))
    driver = SimpleNamespace(state=state)
    api = Api(driver, reconciler, droplog, Metrics(state, reconciler, droplog))
    client = create_app(driver, api).test_client()

    def post(name, body):
        resp = client.post(f"/secnet/{name}", data=json.dumps(body))
        return resp.status_code, json.loads(resp.get_data(as_text=True))

    yield SimpleNamespace(state=state, reconciler=reconciler, droplog=droplog, post=post)
    state.close()


def test_log_filters_by_network_and_cursor(env):
    for i in range(5):
        env.droplog.append({"time": i, "network": NID if i % 2 else "other", "i": i})
    status, data = env.post("log", {"network": NID[:12]})
    assert status == 200 and [e["i"] for e in data["entries"]] == [1, 3] and data["cursor"] == 5
    assert [e["i"] for e in env.post("log", {"since": 3})[1]["entries"]] == [3, 4]
    assert env.post("log", {"since": -1})[0] == 400
    assert env.post("log", {"network": "nosuch"})[0] == 404


def test_explain_route(env):
    status, data = env.post("explain", {"network": NID, "src": "web1", "dst": "api1", "service": "tcp/8080"})
    assert status == 200 and data["allowed"] and data["rule"] == "web->api:tcp/8080"
    status, data = env.post("explain", {"network": NID, "src": "bad1", "dst": "api", "service": "tcp/8080"})
    assert status == 200 and data["reason"] == "quarantined: empty label"
    status, data = env.post("explain", {"network": NID, "src": "web1", "dst": "x", "service": "tcp/1"})
    assert status == 400 and "no container, segment or address" in data["Err"]
    assert env.post("explain", {"network": NID, "src": "web1"})[0] == 400


def test_metrics_map_counters_to_pairs_reasons_and_segments(env):
    status, data = env.post("metrics", {})
    assert status == 200
    samples = {(s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in data["samples"]}
    net = ("network", NID[:12])

    def pair(name, src, dst):
        return samples[(name, (("dst_segment", dst), net, ("src_segment", src)))]

    assert pair("secnet_allowed_packets_total", "web", "api") == 5
    assert pair("secnet_allowed_bytes_total", "web", "api") == 300
    assert pair("secnet_dropped_packets_total", "web", "db") == 7
    assert pair("secnet_dropped_packets_total", "db", OUTSIDE) == 2
    assert samples[("secnet_drops_total", (net, ("reason", "no-rule")))] == 7
    assert samples[("secnet_drops_total", (net, ("reason", "spoofed")))] == 1
    assert samples[("secnet_endpoints", (net, ("segment", "web")))] == 1
    assert samples[("secnet_quarantined_endpoints", (net,))] == 1
    assert samples[("secnet_reconcile_repairs_total", ())] == 3
    assert "first packets of flows" in data["text"] and "# TYPE secnet_drops_total counter" in data["text"]


def test_metrics_addr_parsing():
    assert parse_addr("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_addr("[::1]:9100") == ("::1", 9100)
    assert parse_addr(":9100") == ("0.0.0.0", 9100)
    for bad in ("9100", "host:", "host:0", "host:x"):
        with pytest.raises(ValueError):
            parse_addr(bad)


def test_verify_plans_pairs_services_and_skips(env, tmp_path):
    sandbox = tmp_path / "netns"
    sandbox.write_text("")
    eps = [ep(1, "web1", "web", sandbox=str(sandbox)), ep(2, "web2", "web", sandbox=str(sandbox)),
           ep(3, "api1", "api", sandbox=str(sandbox)), ep(5, "db1", "db", sandbox="/nonexistent")]
    compiled = env.reconciler.compiled(SimpleNamespace(id=NID))
    svcs = verify.services(compiled)
    assert [(p, q) for p, q, n in svcs if n] == [("tcp", 5432), ("tcp", 8080)]
    assert ("icmp", None, False) in svcs and ("tcp", 9, False) in svcs and ("udp", 9, False) in svcs
    cells, skipped = verify.plan(compiled, eps)
    pairs = {(c["src"], c["dst"]) for c in cells}
    assert pairs == {("web", "web"), ("web", "api"), ("api", "web")}
    intra = [c for c in cells if c["src"] == c["dst"]]
    assert {c["dst_container"] for c in intra} == {"web2"} and all(c["expected"] for c in intra)
    web_api = {c["service"]: c["expected"] for c in cells if (c["src"], c["dst"]) == ("web", "api")}
    assert web_api == {"tcp/8080": True, "tcp/5432": False, "icmp": False, "tcp/9": False, "udp/9": False}
    assert {"src": "api", "dst": "api", "why": "one member only"} in skipped
    assert any(s["dst"] == "db" and s["why"] == "no member to probe" for s in skipped)


def test_cli_text_of_a_log_entry_and_a_verify_mismatch():
    entry = {"time": 0.25, "network": NID, "proto": "tcp", "dport": 5432, "why": "no rule allows it",
             "src": {"address": "10.224.0.2", "container": "web1", "segment": "web"},
             "dst": {"address": "192.0.2.9", "container": None, "outside": True}}
    line = cli_format.log_line(entry)
    assert "web1 (web, 10.224.0.2) -> 192.0.2.9 (outside)  tcp/5432  no rule allows it" in line


def test_cli_verify_matrix_marks_mismatches(capsys):
    cell = {"src": "web", "dst": "api", "service": "tcp/8080", "family": 4, "expected": True,
            "observed": False, "reason": "allowed by rule web->api:tcp/8080", "outcome": "timeout",
            "src_container": "web1", "dst_container": "api1", "src_address": "10.224.0.2",
            "dst_address": "10.224.0.3"}
    cli_format.print_verify({"network": NID, "segments": ["api", "web"], "probes": 1, "seconds": 0.5,
                             "mismatches": 1, "services": ["tcp/8080"], "unnamed": [], "cells": [cell],
                             "idle": ["default"], "single": []})
    out = capsys.readouterr().out
    assert "web -> api  v4  MISMATCH" in out
    assert "MISMATCH web (web1 10.224.0.2) -> api (api1 10.224.0.3) tcp/8080 IPv4: expected allow" in out
    assert "not probed (no running member): default" in out


def test_show_lists_every_drop_reason_whichever_backend_counted(env, capsys):
    """One backend reports only the reasons it saw, the other every reason:
    `show` gives the same keys (zeros included) and the same text either way."""
    from plugin.cli.main import _print_show
    from plugin.enforce.backend import REASONS
    status, data = env.post("show", {"network": NID})
    assert status == 200
    assert list(data["dropped"]) == list(REASONS) and list(data["would_drop"]) == list(REASONS)
    assert data["dropped"]["no-rule"] == {"packets": 7, "bytes": 420}
    assert data["dropped"]["egress"] == {"packets": 0, "bytes": 0}
    _print_show(data)
    out = capsys.readouterr().out
    assert "dropped:" in out and "would drop" not in out      # enforce mode, nothing would-dropped
    _print_show(dict(data, mode="audit"))
    assert "would drop (audit mode let it pass):" in capsys.readouterr().out


def test_policy_edits_take_a_list_of_rule_strings_only(env):
    for rules in ("web->api", ["web->api", 7], [None], {"a": 1}):
        status, data = env.post("policy", {"network": NID, "action": "set", "rules": rules})
        assert status == 400 and data["Err"] == "rules must be a list of strings", rules
    status, data = env.post("policy", {"network": NID})
    assert status == 200 and data["rules"] == ["web->api:tcp/8080", "api->db:tcp/5432"]


def test_show_lists_members_by_container_name_not_by_endpoint_id(env):
    # U28-F5: members came in the order of their random endpoint ids
    env.state.put_endpoints([ep(9, "web0", "web"), ep(5, "web2", "web"), ep(7, "bad0", None, quarantine="x")])
    code, body = env.post("show", {"network": NID})
    assert code == 200
    web = next(s for s in body["segments"] if s["name"] == "web")
    assert [m["container"] for m in web["members"]] == ["web0", "web1", "web2"]
    assert [m["container"] for m in body["quarantined"]] == ["bad0", "bad1"]
