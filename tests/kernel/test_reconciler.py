"""The reconciler against a real kernel: drift is seen, repaired, and packets
tell whether the repair is real. State is a real SQLite store in tmp_path;
nft runs inside the lab's host namespace."""
from __future__ import annotations

import pytest

from nsfixtures import BRIDGE, NET_ID, NsKernel, lab, parallel, probe_icmp, probe_tcp  # noqa: F401  (lab is a fixture)
from plugin.conntrack import Flows
from plugin.reconciler import Reconciler
from plugin.state import EndpointRecord, NetworkRecord, State
from segmentation.options import NetworkOptions
from segmentation.rules import parse_rules

pytestmark = pytest.mark.kernel

RULES = "web->api:tcp/8080, web->web:icmp"


def endpoint(c, segment) -> EndpointRecord:
    return EndpointRecord(id=f"ep{c.index:02d}", network_id=NET_ID, veth_host=c.veth,
                          veth_peer="eth0", mac=c.mac, ipv4=f"{c.ip4}/24", ipv6=f"{c.ip6}/64",
                          segment=segment, container=f"c{c.index}", joined=True)


@pytest.fixture
def world(lab, tmp_path):
    """(lab, state, reconciler, net, web, api) with the network realized and in sync."""
    web, api = lab.add(2)
    state = State(str(tmp_path / "state"))
    options = NetworkOptions(rules=parse_rules(RULES), intra="deny", ipv6=True)
    net = NetworkRecord(id=NET_ID, bridge=BRIDGE, mtu=1500, options=options.to_dict(),
                        ipv4=(("10.236.0.0/24", None),), ipv6=(("fd00:236::/64", None),))
    state.put_network(net)
    state.put_endpoints([endpoint(web, "web"), endpoint(api, "api")])
    rec = Reconciler(state, runner=lab.runner, flows=Flows(NsKernel(lab.host)))
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
    assert rec.reconcile() == 0


def nft(lab, *args: str) -> None:
    lab.exec("nft", *args)


DELETIONS = {   # name -> (family, set, element(web, api), the family whose probe it breaks)
    "inet dst4": ("inet", "dst4", lambda web, api: api.ip4, 4),
    "inet s_web_6": ("inet", "s_web_6", lambda web, api: web.ip6, 6),
    "bridge ids4": ("bridge", "ids4", lambda web, api: f'"{api.veth}" . {api.mac} . {api.ip4}', 4),
}


@pytest.mark.parametrize("which", sorted(DELETIONS))
def test_a_deleted_element_is_seen_and_restored(world, which):
    lab, state, rec, net, web, api = world
    family, set_name, element, fam = DELETIONS[which]
    nft(lab, "delete", "element", family, lab.table, set_name, "{", element(web, api), "}")
    assert any(set_name in problem for problem in rec.drift(net)), rec.drift(net)
    assert probe_tcp(web, api.ip(fam), 8080) == "timeout"   # the deletion really bites
    assert rec.reconcile() >= 1
    assert rec.drift(net) == []
    assert_policy(web, api)


def test_an_extra_element_is_seen_and_removed(world):
    lab, state, rec, net, web, api = world
    assert probe_icmp(api, web.ip4) == "timeout"            # only web->web:icmp
    nft(lab, "add", "element", "inet", lab.table, "s_web_4", "{", api.ip4, "}")
    assert probe_icmp(api, web.ip4) == "ok"                 # api now passes as web
    assert any("unexpected" in problem for problem in rec.drift(net))
    assert rec.reconcile() >= 1
    assert rec.drift(net) == []
    assert probe_icmp(api, web.ip4) == "timeout"
    assert_policy(web, api)


def api_reaches_web(api, web) -> str:
    """web->api:tcp/8080 is the only rule: api gets to web only if it counts as web."""
    return probe_tcp(api, web.ip4, 8080)


def test_a_flushed_ruleset_is_rebuilt(world):
    lab, state, rec, net, web, api = world
    nft(lab, "flush", "ruleset")
    assert rec.drift(net) != []
    assert api_reaches_web(api, web) == "ok"                 # no tables: nothing enforced
    assert rec.reconcile() >= 1
    assert rec.drift(net) == []
    assert_policy(web, api)


def test_a_stray_table_is_removed(world):
    lab, state, rec, net, web, api = world
    for family in ("inet", "bridge"):
        nft(lab, "add", "table", family, "secnet_deadbeef0000")
    nft(lab, "add", "table", "inet", "not_ours")
    assert rec.reconcile() >= 2
    tables = rec.runner.tables()
    assert ("inet", "secnet_deadbeef0000") not in tables
    assert ("bridge", "secnet_deadbeef0000") not in tables
    assert ("inet", lab.table) in tables and ("bridge", lab.table) in tables
    assert "not_ours" in lab.exec("nft", "list", "tables").stdout
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


def test_a_flushed_chain_is_drift(world):
    lab, state, rec, net, web, api = world
    assert rec.drift(net) == []
    nft(lab, "flush", "chain", "inet", lab.table, "forward")
    assert api_reaches_web(api, web) == "ok"                 # the policy is gone
    assert rec.drift(net) != []
