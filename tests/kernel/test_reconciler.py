"""The reconciler against a real kernel, through the lab's backend (each of them):
drift is seen, repaired, and packets tell whether the repair is real; a policy
change ends the flows it denies (the reconciler's conntrack pruning runs
inside the lab's host namespace). State is a real SQLite store in tmp_path;
the backend runs inside the lab's host namespace. Tests that tamper with one
backend's own objects (nft sets and tables) are marked ``only``."""
from __future__ import annotations

import dataclasses

import pytest

from nsfixtures import BRIDGE, NET_ID, lab, only  # noqa: F401  (lab is a fixture)
from packets import echoes, open_stream, parallel, probe_icmp, probe_tcp
from plugin.driver.state import State
from plugin.enforce.backend import NetworkSpec
from plugin.enforce.reconciler import Reconciler
from plugin.kernel.conntrack import Flows
from nsfixtures import NsKernel, saved_network
from nsfixtures import endpoint_record as endpoint
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules
from tamper import HOLE_PORT, delete_policy_entry, open_hole

pytestmark = pytest.mark.kernel

RULES = "web->api:tcp/8080, web->web:icmp"


@pytest.fixture
def world(lab, tmp_path):
    """(lab, state, reconciler, net, web, api) with the network realized and in sync."""
    web, api = lab.add(2)
    state, net = saved_network(lab, str(tmp_path / "state"), RULES, web, api)
    rec = Reconciler(state, {lab.backend_name: lab.backend}, flows=Flows(NsKernel(lab.host)))
    rec.network_added(net)
    assert rec.drift(net) == []
    assert_policy(web, api)
    yield lab, state, rec, net, web, api
    state.close()


def assert_policy(web, api) -> None:
    """The rule holds in both families: web reaches api:8080, not the reverse."""
    cells = [(a, b, fam) for a, b in ((web, api), (api, web)) for fam in (4, 6)]
    got = parallel(lambda a, b, fam: probe_tcp(a, b.ip(fam), 8080), cells)
    assert got == ["ok", "ok", "timeout", "timeout"]


def test_dropped_flows_are_not_drift(world):
    """The drop log's flow sets fill with every drop: that is not drift."""
    lab, state, rec, net, web, api = world
    assert probe_tcp(api, web.ip6, 8080) == "timeout"
    assert rec.drift(net) == []
    assert rec.reconcile(full=False) == 0


def nft(lab, *args: str) -> None:
    lab.exec("nft", *args)


def id_element(c, fam) -> str:
    return c.ip(fam)


DELETIONS = {   # name -> (family, set, element(web, api), the family whose probe it breaks)
    "inet id4": ("inet", "id4", lambda web, api: api.ip4, 4),
    "inet id6": ("inet", "id6", lambda web, api: web.ip6, 6),
    "bridge ids4": ("bridge", "ids4", lambda web, api: f'"{api.veth}" . {api.mac} . {api.ip4}', 4),
}


@pytest.mark.parametrize("which", sorted(DELETIONS))
@only("nftables")
def test_a_deleted_element_is_seen_and_restored(world, which):
    lab, state, rec, net, web, api = world
    family, set_name, element, fam = DELETIONS[which]
    nft(lab, "delete", "element", family, lab.table, set_name, "{", element(web, api), "}")
    assert any(set_name in problem for problem in rec.drift(net)), rec.drift(net)
    assert probe_tcp(web, api.ip(fam), 8080) == "timeout"   # the deletion really bites
    assert rec.reconcile(full=False) >= 1
    assert rec.drift(net) == []
    assert_policy(web, api)


@only("nftables")
def test_an_extra_element_is_seen_and_removed(world):
    lab, state, rec, net, web, api = world
    assert probe_icmp(api, web.ip4) == "timeout"            # only web->web:icmp
    web_id = state.identities(NET_ID)["web"]
    nft(lab, "delete", "element", "inet", lab.table, "id4", "{", api.ip4, "}")
    nft(lab, "add", "element", "inet", lab.table, "id4", "{", api.ip4, ":", str(web_id), "}")
    assert probe_icmp(api, web.ip4) == "ok"                 # api now passes as web
    assert rec.drift(net) != []
    assert rec.reconcile(full=False) >= 1
    assert rec.drift(net) == []
    assert probe_icmp(api, web.ip4) == "timeout"
    assert_policy(web, api)


def api_reaches_web(api, web) -> str:
    """web->api:tcp/8080 is the only rule: api gets to web only if it counts as web."""
    return probe_tcp(api, web.ip4, 8080)


@only("nftables")
def test_a_flushed_ruleset_is_rebuilt(world):
    lab, state, rec, net, web, api = world
    nft(lab, "flush", "ruleset")
    assert rec.drift(net) != []
    assert api_reaches_web(api, web) == "ok"                 # no tables: nothing enforced
    assert rec.reconcile(full=False) >= 1
    assert rec.drift(net) == []
    assert_policy(web, api)


@only("nftables")
def test_a_stray_table_is_removed(world):
    lab, state, rec, net, web, api = world
    for family in ("inet", "bridge"):
        nft(lab, "add", "table", family, "secnet_deadbeef0000")
    nft(lab, "add", "table", "inet", "not_ours")
    assert rec.reconcile() >= 1
    tables = lab.exec("nft", "list", "tables").stdout
    assert "secnet_deadbeef0000" not in tables
    assert f"inet {lab.table}" in tables and f"bridge {lab.table}" in tables
    assert "not_ours" in tables
    assert rec.drift(net) == []
    assert_policy(web, api)


def test_a_late_segment_is_enforced_as_a_delta(world):
    """An endpoint whose segment becomes known: dropped before, member after."""
    lab, state, rec, net, web, api = world
    late = lab.add(1)[0]
    pending = endpoint(late, None)
    state.put_endpoint(pending)
    rec.endpoint_changed(net, pending)
    assert rec.drift(net) == []
    assert probe_tcp(web, late.ip4, 8080) == "timeout"
    known = pending.evolve(segment="api")
    state.put_endpoint(known)
    rec.endpoint_changed(net, known)
    late.ip_cmd("neigh", "flush", "all")
    web.ip_cmd("neigh", "flush", "all")
    assert rec.drift(net) == []
    for fam in (4, 6):
        assert probe_tcp(web, late.ip(fam), 8080) == "ok"
        assert probe_tcp(late, web.ip(fam), 8080) == "timeout"


@only("nftables")
def test_a_flushed_chain_is_drift(world):
    lab, state, rec, net, web, api = world
    assert rec.drift(net) == []
    nft(lab, "flush", "chain", "inet", lab.table, "forward")
    assert api_reaches_web(api, web) == "ok"                 # the policy is gone
    assert rec.drift(net) != []


@only("nftables")
def test_a_rule_whose_port_changed_behind_the_daemons_back_is_repaired(world):
    """The policy entry web->api:tcp/8080 becomes tcp/8081 in the kernel: drift names
    it, packets prove it, and one reconcile pass puts 8080 back."""
    lab, state, rec, net, web, api = world
    ids = state.identities(NET_ID)
    old = f"{ids['web']} . {ids['api']} . tcp . 8080"
    new = f"{ids['web']} . {ids['api']} . tcp . 8081"
    nft(lab, "delete", "element", "inet", lab.table, "pol_port", "{", old, "}")
    nft(lab, "add", "element", "inet", lab.table, "pol_port", "{", new, "}")
    assert probe_tcp(web, api.ip4, 8080) == "timeout"
    assert any("pol_port" in p for p in rec.drift(net)), rec.drift(net)
    assert rec.reconcile(full=False) == 1
    assert rec.drift(net) == []
    assert_policy(web, api)
    assert probe_tcp(web, api.ip4, 8081) == "timeout"


def test_a_deleted_policy_element_is_restored_by_a_pass(world):
    lab, state, rec, net, web, api = world
    policy = rec.compiled(net)
    entry = next(e for e in policy.entries if e.rule == "web->api:tcp/8080")
    delete_policy_entry(lab, entry)
    assert probe_tcp(web, api.ip4, 8080) == "timeout"       # the deletion really bites
    assert rec.drift(net) != []
    assert rec.reconcile(full=False) == 1
    assert rec.drift(net) == []
    assert_policy(web, api)


def test_a_hole_is_closed_by_a_pass(world):
    lab, state, rec, net, web, api = world
    open_hole(lab, web, api)
    assert probe_tcp(web, api.ip4, HOLE_PORT) == "ok"        # the hole is real
    assert rec.reconcile(full=False) == 1
    assert rec.drift(net) == []
    assert probe_tcp(web, api.ip4, HOLE_PORT) == "timeout"
    assert_policy(web, api)


def test_state_of_a_network_no_record_owns_is_removed(world):
    lab, state, rec, net, web, api = world
    stray = NetworkSpec(id="dead" + "be" * 30, bridge=BRIDGE)
    empty = compile_policy_map(NetworkOptions(), {})
    lab.backend.apply_network(stray, empty, [])
    assert stray.id[:12] in {n[:12] for n in lab.backend.networks()}
    assert rec.reconcile() >= 1
    assert {n[:12] for n in lab.backend.networks()} == {NET_ID[:12]}
    assert rec.drift(net) == []
    assert_policy(web, api)


def test_a_policy_change_ends_the_flows_it_denies(world):
    """The system's behaviour on both backends: eBPF cuts by generation, nftables by
    the reconciler's conntrack pruning."""
    lab, state, rec, net, web, api = world
    streams = [open_stream(web, api.ip(fam), 8080) for fam in (4, 6)]
    try:
        changed = dataclasses.replace(net, options=dataclasses.replace(
            net.options, rules=parse_rules("web->api:tcp/5432, web->web:icmp")))
        state.put_network(changed)
        rec.policy_changed(changed)
        assert [echoes(s) for s in streams] == [False, False]
    finally:
        for s in streams:
            s.close()
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432)] == ["timeout", "ok"]
    assert rec.drift(changed) == []


def test_a_new_segment_that_takes_over_an_idle_identity_gets_only_what_it_allows(world):
    """A segment whose last member left stays allocated, its entries in force (here a ``*``
    rule's), until a new segment takes its identity over: the newcomer is dropped while
    pending, then gets exactly what its rules allow (the ``*`` rule), no more; no drift."""
    lab, state, rec, net, web, api = world
    net = net.evolve(options=dataclasses.replace(net.options, rules=parse_rules(RULES + ", *->api:tcp/8080")))
    state.put_network(net)
    rec.policy_changed(net)
    late = lab.add(1)[0]
    first = endpoint(late, "old1")
    state.put_endpoint(first)
    rec.endpoint_changed(net, first)
    idle = state.identities(NET_ID)["old1"]
    assert probe_tcp(late, api.ip4, 8080) == "ok"
    rec.endpoint_removed(net, first)
    assert state.identities(NET_ID)["old1"] == idle                   # idle: kept, entries in force
    pending = endpoint(late, None)
    state.put_endpoint(pending)
    rec.endpoint_changed(net, pending)
    assert probe_tcp(late, api.ip4, 8080) == "timeout"                # pending: dropped
    fresh = pending.evolve(segment="fresh")
    state.put_endpoint(fresh)
    rec.endpoint_changed(net, fresh)
    assert state.identities(NET_ID)["fresh"] == idle and "old1" not in state.identities(NET_ID)
    assert rec.drift(net) == []
    for c in (late, web, api):
        c.ip_cmd("neigh", "flush", "all")
    for fam in (4, 6):
        assert probe_tcp(late, api.ip(fam), 8080) == "ok"              # the * rule
        assert probe_tcp(late, web.ip(fam), 8080) == "timeout"
        assert probe_tcp(web, late.ip(fam), 8080) == "timeout"
        assert probe_tcp(api, late.ip(fam), 8080) == "timeout"
