"""Engine detection and the forward-filter strategy, from /version and /info
answers written from moby's source (tests/unit/data/engines/*.json, each
naming its source), and the ForwardFilter's choice of writers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin.kernel import engine
from plugin.cli.format import engine_line
from plugin.driver.driver import Driver
from plugin.errors import Unsupported
from plugin.enforce.hostfw.forward import ForwardFilter
from plugin.kernel.nftevents import RESYNC, NftEvent
from plugin.driver.protocol import CreateNetworkRequest
from plugin.driver.state import State
from tests.unit.driver_fakes import FakeLinks, new_id

DATA = Path(__file__).parent / "data" / "engines"

# fixture -> (major, minor, firewall_backend, strategy mode)
EXPECTED = {
    "docker-19.03": (19, 3, "", engine.UNSUPPORTED),
    "docker-20.10-debian": (20, 10, "", engine.IPTABLES),
    "docker-25.0": (25, 0, "", engine.IPTABLES),
    "docker-26.1": (26, 1, "", engine.IPTABLES),
    "docker-27.5": (27, 5, "", engine.IPTABLES),
    "docker-28.0": (28, 0, "", engine.IPTABLES),
    "docker-28.5-iptables": (28, 5, "iptables", engine.IPTABLES),
    "docker-28.5-firewalld": (28, 5, "iptables+firewalld", engine.IPTABLES),
    "docker-28.5-nftables-env": (28, 5, "nftables", engine.NFTABLES),
    "docker-29.0-iptables": (29, 0, "iptables", engine.IPTABLES),
    "docker-29.7-nftables": (29, 7, "nftables", engine.NFTABLES),
    "docker-29.7-nftables-firewalld": (29, 7, "nftables+firewalld", engine.NFTABLES),
    "docker-future-backend": (30, 0, "ebpf", engine.UNSUPPORTED),
}


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def test_every_fixture_is_covered_and_names_its_source():
    assert {p.stem for p in DATA.glob("*.json")} == set(EXPECTED)
    for name in EXPECTED:
        assert load(name)["source"].strip()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_facts_and_strategy_from_recorded_answers(name):
    rec = load(name)
    facts = engine.facts_from(rec["version"], rec["info"])
    major, minor, backend, mode = EXPECTED[name]
    assert (facts.major, facts.minor, facts.firewall_backend) == (major, minor, backend)
    assert facts.api_version == rec["version"]["ApiVersion"]
    strategy = engine.decide(facts)
    assert strategy.mode == mode
    assert strategy.reason and "\n" not in strategy.reason
    assert facts.version in strategy.reason  # names the engine


def test_firewalld_and_info_pairs():
    rec = load("docker-29.7-nftables-firewalld")
    facts = engine.facts_from(rec["version"], rec["info"])
    assert facts.firewalld and facts.firewall == "nftables"
    assert ("ReloadedAt", "2026-03-02T11:00:00Z") in facts.firewall_info
    plain = load("docker-28.5-iptables")
    assert not engine.facts_from(plain["version"], plain["info"]).firewalld


def test_docker_28_reason_says_which_chain_jumps_to_docker_user():
    facts = engine.facts_from(load("docker-28.0")["version"], load("docker-28.0")["info"])
    assert "before DOCKER-FORWARD" in engine.decide(facts).reason


def test_unsupported_reasons_name_the_engine_feature():
    old = engine.decide(engine.facts_from(load("docker-19.03")["version"], {}))
    assert "older than 20.10" in old.reason and not old.usable
    odd = engine.decide(engine.facts_from(load("docker-future-backend")["version"],
                                          load("docker-future-backend")["info"]))
    assert "firewall backend 'ebpf'" in odd.reason and not odd.usable


@pytest.mark.parametrize("version,info", [
    (None, None), ({}, {}), ({"Version": "garbage"}, {"FirewallBackend": "nftables"}),
    ({"Version": 29}, {"FirewallBackend": {"Driver": None, "Info": [["only-one"]]}}),
])
def test_odd_answers_never_raise(version, info):
    facts = engine.facts_from(version, info)
    assert engine.decide(facts).mode in (engine.UNKNOWN, engine.UNSUPPORTED, engine.IPTABLES)


def test_not_detected_is_unknown_and_usable():
    strategy = engine.decide(None)
    assert strategy.mode == engine.UNKNOWN and strategy.usable


@pytest.mark.parametrize("text,expected", [
    ("20.10.24+dfsg1", (20, 10)), ("29.0.0-rc.1", (29, 0)), ("v28.1.1", (28, 1)),
    ("", (0, 0)), ("dev", (0, 0)),
])
def test_parse_version(text, expected):
    assert engine.parse_version(text) == expected


class FakeClient:
    def __init__(self, name=None, fail=None):
        self.rec, self.fail, self.calls = (load(name) if name else None), fail, []

    def version(self):
        self.calls.append("version")
        if self.fail:
            raise self.fail
        return self.rec["version"]

    def info(self):
        self.calls.append("info")
        return self.rec["info"]


def test_detect_reads_version_and_info():
    client = FakeClient("docker-29.7-nftables")
    facts = engine.detect(client)
    assert client.calls == ["version", "info"] and facts.firewall == "nftables"


# --- ForwardFilter ----------------------------------------------------------

class FakeWriter:
    def __init__(self, name, forward_drop=False):
        self.name, self.rules, self.binaries = name, {}, ("iptables",)
        self.forward_drop = forward_drop
        self.ensured = 0

    def ensure(self, bridge, nid):
        self.ensured += 1
        if self.rules.get(nid) == bridge:
            return False
        self.rules[nid] = bridge
        return True

    def remove(self, bridge, nid):
        self.rules.pop(nid, None)

    def owned(self):
        return [(self.name, b, n) for n, b in self.rules.items()]

    def drop_all(self):
        self.rules.clear()

    def forward_drops(self):
        return self.forward_drop


def make_filter(forward_drop=False):
    ipt, guard = FakeWriter("iptables", forward_drop), FakeWriter("nft")
    return ForwardFilter(ipt, guard, every=None, which=lambda b: f"/usr/sbin/{b}"), ipt, guard


def facts(name):
    rec = load(name)
    return engine.facts_from(rec["version"], rec["info"])


def test_before_detection_rules_go_to_docker_user():
    fw, ipt, guard = make_filter()
    assert fw.ensure("sn-a", "n1") is True
    assert ipt.rules == {"n1": "sn-a"} and guard.rules == {}
    assert fw.refusal() is None


def test_nftables_engine_moves_rules_to_the_guard_table():
    fw, ipt, guard = make_filter()
    fw.ensure("sn-a", "n1")
    fw.set_facts(facts("docker-29.7-nftables"))
    assert guard.rules == {"n1": "sn-a"} and ipt.rules == {}
    assert fw.status()["forward_filter"] == "nftables"


def test_nftables_engine_keeps_docker_user_while_iptables_forward_drops():
    fw, ipt, guard = make_filter(forward_drop=True)
    fw.ensure("sn-a", "n1")
    fw.set_facts(facts("docker-29.7-nftables"))
    assert guard.rules == {"n1": "sn-a"} and ipt.rules == {"n1": "sn-a"}


def test_back_to_iptables_drops_the_guard_table():
    fw, ipt, guard = make_filter()
    fw.set_facts(facts("docker-29.7-nftables"))
    fw.ensure("sn-a", "n1")
    fw.set_facts(facts("docker-29.0-iptables"))
    assert guard.rules == {} and ipt.rules == {"n1": "sn-a"}


def test_remove_cleans_both_writers():
    fw, ipt, guard = make_filter(forward_drop=True)
    fw.set_facts(facts("docker-29.7-nftables"))
    fw.ensure("sn-a", "n1")
    fw.remove("sn-a", "n1")
    assert ipt.rules == {} == guard.rules and fw.owned() == []


def test_repair_rewrites_what_was_removed_and_counts_it():
    fw, ipt, _guard = make_filter()
    fw.ensure("sn-a", "n1")
    fw.ensure("sn-b", "n2")
    assert fw.repair() == 0 and fw.repairs == 0
    ipt.rules.clear()  # iptables -F DOCKER-USER
    assert fw.repair() == 2 and fw.repairs == 1
    assert ipt.rules == {"n1": "sn-a", "n2": "sn-b"}


def test_engine_connected_reads_facts_and_repairs():
    fw, ipt, _guard = make_filter()
    fw.ensure("sn-a", "n1")
    ipt.rules.clear()
    fw.engine_connected(FakeClient("docker-28.5-firewalld"))
    assert fw.facts.firewalld and ipt.rules == {"n1": "sn-a"}


def test_engine_that_does_not_answer_keeps_the_strategy():
    fw, _ipt, _guard = make_filter()
    fw.set_facts(facts("docker-29.7-nftables"))
    fw.engine_connected(FakeClient("docker-29.7-nftables", fail=ConnectionError("refused")))
    assert fw.strategy.mode == engine.NFTABLES


def test_unsupported_engine_refuses_and_still_fails_closed():
    fw, ipt, _guard = make_filter()
    fw.set_facts(facts("docker-future-backend"))
    assert "firewall backend 'ebpf'" in fw.refusal()
    fw.ensure("sn-a", "n1")  # restore of an existing network: DOCKER-USER drops stay
    assert ipt.rules == {"n1": "sn-a"}


def test_create_network_fails_with_the_reason_and_leaves_nothing(tmp_path):
    fw, ipt, guard = make_filter()
    fw.set_facts(facts("docker-19.03"))
    links = FakeLinks()
    driver = Driver(State(str(tmp_path)), links, fw)
    body = {"NetworkID": new_id(), "Options": {}, "IPv4Data": [
        {"AddressSpace": "LocalDefault", "Pool": "10.200.0.0/24", "Gateway": "10.200.0.1/24"}],
        "IPv6Data": []}
    with pytest.raises(Unsupported) as exc:
        driver.create_network(CreateNetworkRequest.from_wire(body))
    assert "older than 20.10" in str(exc.value) and "\n" not in str(exc.value)
    assert links.links == {} and ipt.rules == {} and guard.rules == {}
    assert driver.state.networks() == []


@pytest.mark.parametrize("event,wanted", [
    (RESYNC, True),
    (NftEvent("delete", "rule", "ip", "filter", "DOCKER-USER"), True),
    (NftEvent("delete", "rule", "ip6", "filter", "DOCKER-USER"), True),
    (NftEvent("add", "rule", "ip", "filter", "FORWARD"), True),
    (NftEvent("delete", "chain", "ip", "filter", "DOCKER-USER"), True),
    (NftEvent("delete", "table", "ip", "filter"), True),
    (NftEvent("delete", "table", "inet", "secnet-guard"), True),
    (NftEvent("delete", "rule", "inet", "secnet-guard", "forward"), True),
    (NftEvent("add", "rule", "inet", "secnet-guard", "forward"), False),
    (NftEvent("add", "rule", "ip", "filter", "DOCKER"), False),
    (NftEvent("add", "rule", "ip", "nat", "DOCKER"), False),
    (NftEvent("add", "element", "inet", "secnet_abc", name="dst4"), False),
    (NftEvent("add", "generation"), False),
])
def test_interested_in_what_may_remove_our_rules(event, wanted):
    assert ForwardFilter.interested(event) is wanted


def test_status_line_names_version_backend_and_mode():
    fw, _ipt, _guard = make_filter()
    assert "not detected yet" in engine_line(fw.status())
    fw.set_facts(facts("docker-29.7-nftables"))
    line = engine_line(fw.status())
    assert "Docker 29.7.2 (API 1.55)" in line and "firewall nftables" in line
    assert "forward filter nftables" in line


@pytest.mark.parametrize("outputs,expected", [
    ({"iptables": "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n", "ip6tables": "-P FORWARD ACCEPT\n"}, True),
    ({"iptables": "-P FORWARD ACCEPT\n", "ip6tables": "-P FORWARD DROP\n"}, True),
    ({"iptables": "-P FORWARD ACCEPT\n", "ip6tables": "-P FORWARD ACCEPT\n"}, False),
    ({"iptables": None, "ip6tables": None}, False),  # not installed
])
def test_docker_firewall_reads_the_forward_policy(outputs, expected):
    import subprocess

    from plugin.enforce.hostfw.dockerfw import DockerFirewall

    class Probe(DockerFirewall):
        def _run(self, binary, *args):
            assert args == ("-t", "filter", "-S", "FORWARD")
            if outputs[binary] is None:
                raise FileNotFoundError(binary)
            return subprocess.CompletedProcess(args, 0, outputs[binary], "")

    assert Probe().forward_drops() is expected


def test_missing_iptables_refuses_while_it_is_needed():
    ipt, guard = FakeWriter("iptables"), FakeWriter("nft")
    fw = ForwardFilter(ipt, guard, every=None, which=lambda b: None)
    assert fw.refusal().startswith("iptables not installed: secnet needs it for its DOCKER-USER")
    fw.set_facts(facts("docker-29.7-nftables"))  # nftables mode needs no iptables
    assert fw.refusal() is None


def test_refusal_reaches_docker_as_one_err_line(tmp_path):
    import json as _json

    from plugin.daemon.app import create_app
    fw, _ipt, _guard = make_filter()
    fw.set_facts(facts("docker-future-backend"))
    client = create_app(Driver(State(str(tmp_path)), FakeLinks(), fw)).test_client()
    body = {"NetworkID": new_id(), "Options": {}, "IPv4Data": [
        {"AddressSpace": "LocalDefault", "Pool": "10.200.0.0/24", "Gateway": "10.200.0.1/24"}]}
    resp = client.post("/NetworkDriver.CreateNetwork", data=_json.dumps(body))
    err = _json.loads(resp.get_data(as_text=True))["Err"]
    assert resp.status_code == 403
    assert err == ("secnet cannot work with this engine: Docker 30.0.0 firewall backend 'ebpf' "
                   "is not one secnet knows (iptables, nftables)")


@pytest.mark.parametrize("watch_fails", [False, True])
def test_wiring_subscribes_the_filter_and_hooks_engine_detection(monkeypatch, watch_fails):
    from types import SimpleNamespace

    from plugin.daemon import wiring

    class FakeWatcher:
        def __init__(self):
            self.subs = []

        def start(self):
            if watch_fails:
                raise PermissionError(1, "Operation not permitted")
            return self

        def subscribe(self, callback, match=None):
            self.subs.append((callback, match))

        def ignore_own_threads(self):
            self.own_ignored = True

    monkeypatch.setattr(wiring, "NftWatcher", FakeWatcher)
    fw, _ipt, _guard = make_filter()
    daemon = SimpleNamespace(firewall=fw, resolver=SimpleNamespace(connect_hooks=[]), backends={},
                             nftwatch=None)
    try:
        wiring.start_watches(daemon)
        assert daemon.resolver.connect_hooks == [fw.engine_connected]
        if watch_fails:
            assert daemon.nftwatch is None  # the periodic pass still repairs
        else:
            assert daemon.nftwatch.subs == [(fw.trigger, fw.interested)]
            assert daemon.nftwatch.own_ignored   # the daemon's own libnftables writes
    finally:
        fw.stop()


def test_docker_firewall_writes_only_what_is_missing_in_one_restore():
    import shlex

    from plugin.enforce.hostfw.dockerfw import CHAIN, DockerFirewall

    fw, nid = DockerFirewall(), "ab" * 32
    specs = fw._specs("sn-x", nid)
    base = [["-P", "FORWARD", "DROP"], ["-N", CHAIN], ["-A", "FORWARD", "-j", CHAIN]]
    complete = base + [["-A", CHAIN, *spec] for spec in specs] + [["-A", CHAIN, "-j", "RETURN"]]
    assert fw._ensure_lines(complete, "sn-x", nid) == ([], False)
    lines, rewrite = fw._ensure_lines(base + [["-A", CHAIN, *specs[0]]], "sn-x", nid)
    assert rewrite and lines[0] == f"-D {CHAIN} {shlex.join(specs[0])}"
    assert lines[1:] == [f"-A {CHAIN} {shlex.join(spec)}" for spec in specs]   # no RETURN: at the end
    # above Docker's closing RETURN, below the admin's own rule (U18-F7)
    admin, docker = ["-A", CHAIN, "-s", "10.231.0.9/32", "-j", "DROP"], ["-A", CHAIN, "-j", "RETURN"]
    lines, rewrite = fw._ensure_lines(base + [admin, docker], "sn-x", nid)
    assert rewrite and lines == [f"-I {CHAIN} 2 {shlex.join(spec)}" for spec in reversed(specs)]
    stale = ["-i", "sn-x", "-m", "comment", "--comment", "secnet:" + nid, "-j", "ACCEPT"]
    lines, rewrite = fw._ensure_lines(complete + [["-A", CHAIN, *stale]], "sn-x", nid)
    assert (lines, rewrite) == ([f"-D {CHAIN} {shlex.join(stale)}"], False)
    lines, rewrite = fw._ensure_lines([["-P", "FORWARD", "DROP"]], "sn-x", nid)
    assert rewrite and lines[:2] == [f":{CHAIN} - [0:0]", f"-I FORWARD 1 -j {CHAIN}"] and len(lines) == 6


def test_docker_firewall_restores_side_by_side_and_names_the_refusal(tmp_path, monkeypatch):
    # Both binaries' restores run at once; a refusal names its binary, a binary that
    # cannot start does not leave the other one waiting on its input.
    import os
    import stat

    import pytest as _pytest

    from plugin.enforce.hostfw.dockerfw import DockerFirewall

    for name, code in (("good-restore", 0), ("bad-restore", 1)):
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\ncat > {tmp_path}/{name}.in\necho refused >&2\nexit {code}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    fw = DockerFirewall()
    fw._restore_all({"good": ["-I X 1 -j ACCEPT"], "nothing": []})
    assert (tmp_path / "good-restore.in").read_text() == "*filter\n-I X 1 -j ACCEPT\nCOMMIT\n"
    with _pytest.raises(RuntimeError, match="bad-restore failed: refused"):
        fw._restore_all({"good": ["-N Y"], "bad": ["-N Y"]})
    with _pytest.raises(OSError):
        fw._restore_all({"good": ["-N Z"], "missing": ["-N Z"]})
    assert (tmp_path / "good-restore.in").read_text() == "*filter\n-N Z\nCOMMIT\n"
