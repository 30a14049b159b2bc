"""The Flask app (plugin.daemon.app) in front of the real Driver, built on in-memory
links and firewall and a State in a tmp dir: what Docker sees on the wire."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from driver_fakes import (FakeFirewall, FakeLinks, create_endpoint_body, create_network_body,
                          endpoint_body, new_id)
from plugin.driver import protocol
from plugin.daemon.app import ROUTES, create_app
from plugin.driver.driver import Driver
from plugin.driver.state import State

BODY_ROUTES = sorted(p for p, (req_type, _) in ROUTES.items() if req_type is not None)
# Never called for a local-scope driver; the app answers them with a stub
# without reading the request (only the JSON decoding applies).
STUB_ROUTES = {"/NetworkDriver.AllocateNetwork", "/NetworkDriver.FreeNetwork"}
CHECKED_ROUTES = sorted(set(BODY_ROUTES) - STUB_ROUTES)
ENDPOINT_ROUTES = sorted(p for p, (req_type, _) in ROUTES.items()
                         if req_type in (protocol.EndpointRequest, protocol.CreateEndpointRequest))
LOOKUP_ROUTES = ["/NetworkDriver.EndpointOperInfo", "/NetworkDriver.Join",
                 "/NetworkDriver.ProgramExternalConnectivity"]


@pytest.fixture
def env(tmp_path):
    state = State(str(tmp_path / "state"))
    links, fw = FakeLinks(), FakeFirewall()
    driver = Driver(state, links, fw)
    client = create_app(driver).test_client()

    def post(path, body=None, raw=None):
        """POST like Docker does: no JSON content type. Returns (status, decoded JSON)."""
        data = raw if raw is not None else ("" if body is None else json.dumps(body))
        resp = client.post(path, data=data)
        text = resp.get_data(as_text=True)
        assert "Traceback" not in text and "<html" not in text.lower(), text
        assert "json" in resp.content_type, resp.content_type
        return resp.status_code, json.loads(text)

    yield SimpleNamespace(state=state, links=links, fw=fw, driver=driver, client=client, post=post)
    state.close()


@pytest.fixture
def joined(env):
    """A network with one created and joined endpoint."""
    nid, eid = new_id(), new_id()
    assert env.post("/NetworkDriver.CreateNetwork", create_network_body(nid)) == (200, {})
    status, _ = env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid))
    assert status == 200
    assert env.post("/NetworkDriver.Join", endpoint_body(nid, eid))[0] == 200
    return SimpleNamespace(nid=nid, eid=eid)


def valid_body(path, nid, eid):
    if path == "/NetworkDriver.CreateNetwork":
        return create_network_body(nid)
    if path == "/NetworkDriver.CreateEndpoint":
        return create_endpoint_body(nid, eid)
    if path in ("/NetworkDriver.DeleteNetwork", "/NetworkDriver.AllocateNetwork",
                "/NetworkDriver.FreeNetwork"):
        return {"NetworkID": nid}
    if ROUTES[path][0] is None:
        return None
    return endpoint_body(nid, eid)


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_every_route_answers_json_without_error(env, joined, path):
    status, body = env.post(path, valid_body(path, joined.nid, joined.eid))
    assert status == 200 and isinstance(body, dict) and "Err" not in body, (status, body)


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_garbage_body_answers_json(env, path):
    status, body = env.post(path, raw="<html>not json{")
    assert isinstance(body, dict)
    if path in BODY_ROUTES:
        assert status == 400 and "not valid JSON" in body["Err"], body


@pytest.mark.parametrize("path", CHECKED_ROUTES)
def test_body_must_be_a_json_object(env, path):
    status, body = env.post(path, [1, 2])
    assert status == 400 and "must be a JSON object" in body["Err"], body


@pytest.mark.parametrize("path", CHECKED_ROUTES)
def test_missing_network_id_is_named(env, path):
    status, body = env.post(path, {"EndpointID": new_id()})
    assert status == 400 and "NetworkID" in body["Err"], body


@pytest.mark.parametrize("path", ENDPOINT_ROUTES)
def test_missing_endpoint_id_is_named(env, path):
    status, body = env.post(path, {"NetworkID": new_id()})
    assert status == 400 and "EndpointID" in body["Err"], body


def test_bad_id_is_named(env):
    status, body = env.post("/NetworkDriver.CreateNetwork", {"NetworkID": "../etc"})
    assert status == 400 and "NetworkID" in body["Err"] and "../etc" in body["Err"]


@pytest.mark.parametrize("path", ["/NetworkDriver.CreateEndpoint"] + LOOKUP_ROUTES)
def test_unknown_network_is_named(env, path):
    nid, eid = new_id(), new_id()
    body = create_endpoint_body(nid, eid) if "Create" in path else endpoint_body(nid, eid)
    status, resp = env.post(path, body)
    assert status == 404 and "network" in resp["Err"] and nid[:12] in resp["Err"], resp


@pytest.mark.parametrize("path", LOOKUP_ROUTES)
def test_unknown_endpoint_is_named(env, joined, path):
    eid = new_id()
    status, resp = env.post(path, endpoint_body(joined.nid, eid))
    assert status == 404 and "endpoint" in resp["Err"] and eid[:12] in resp["Err"], resp


def test_unknown_path_and_wrong_method_answer_json(env):
    status, body = env.post("/NetworkDriver.Frobnicate", {})
    assert status == 404 and "/NetworkDriver.Frobnicate" in body["Err"]
    resp = env.client.get("/Plugin.Activate")
    assert resp.status_code == 405 and "GET" in json.loads(resp.get_data())["Err"]


class ExplodingDriver:
    def capabilities(self):
        raise RuntimeError("password=hunter2 at /etc/shadow")


def test_internal_error_is_json_without_traceback_or_detail():
    resp = create_app(ExplodingDriver()).test_client().post("/NetworkDriver.GetCapabilities")
    text = resp.get_data(as_text=True)
    assert resp.status_code == 500
    assert json.loads(text) == {"Err": "internal error: RuntimeError"}
    assert "hunter2" not in text and "Traceback" not in text


def test_activate_and_capabilities(env):
    assert env.post("/Plugin.Activate") == (200, {"Implements": ["NetworkDriver"]})
    status, caps = env.post("/NetworkDriver.GetCapabilities")
    assert status == 200 and caps["Scope"] == "local" and caps["ConnectivityScope"] == "local"


def test_create_network_makes_bridge_rule_and_row(env):
    nid = new_id()
    body = create_network_body(nid, pool6="fd00:220::/64", gateway6="fd00:220::1/64")
    assert env.post("/NetworkDriver.CreateNetwork", body) == (200, {})
    bridge = "sn-" + nid[:12]
    link = env.links.links[bridge]
    assert link["kind"] == "bridge" and link["owner"] == nid and link["mtu"] == 1500
    assert link["addrs"] == {"10.220.1.1/24", "fd00:220::1/64"}
    assert env.fw.rules == {(bridge, nid)}
    assert env.state.get_network(nid).bridge == bridge


def test_create_network_twice_is_idempotent(env):
    nid = new_id()
    for _ in range(2):
        assert env.post("/NetworkDriver.CreateNetwork", create_network_body(nid)) == (200, {})
    assert [n.id for n in env.state.networks()] == [nid]
    assert list(env.links.of_kind("bridge")) == ["sn-" + nid[:12]]


def test_same_network_id_with_other_settings_conflicts(env):
    nid = new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    status, body = env.post("/NetworkDriver.CreateNetwork",
                            create_network_body(nid, generic={"secnet.mtu": "1400"}))
    assert status == 409 and nid[:12] in body["Err"]
    assert env.state.get_network(nid).mtu == 1500


@pytest.mark.parametrize("key,value", [("secnet.bogus", "1"), ("secnet.mtu", "99"),
                                       ("secnet.allow", "web->"),
                                       ("secnet.bridge", "waytoolongbridgename")])
def test_bad_option_is_named_and_nothing_is_made(env, key, value):
    status, body = env.post("/NetworkDriver.CreateNetwork",
                            create_network_body(new_id(), generic={key: value}))
    assert status == 400 and key in body["Err"], body
    assert env.links.links == {} and env.fw.rules == set() and env.state.networks() == []


def test_foreign_options_are_ignored(env):
    nid = new_id()
    body = create_network_body(nid, generic={"com.example.colour": "blue"})
    assert env.post("/NetworkDriver.CreateNetwork", body) == (200, {})


def test_bridge_and_mtu_options_reach_the_kernel(env):
    nid, eid = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork",
             create_network_body(nid, generic={"secnet.bridge": "br-unit", "secnet.mtu": "1400"}))
    assert env.links.links["br-unit"]["mtu"] == 1400
    env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid))
    host = env.state.get_endpoint(eid).veth_host
    assert env.links.links[host]["master"] == "br-unit" and env.links.links[host]["mtu"] == 1400


def test_second_network_on_a_used_bridge_name_conflicts(env):
    generic = {"secnet.bridge": "br-unit"}
    first, second = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(first, generic=generic))
    status, body = env.post("/NetworkDriver.CreateNetwork",
                            create_network_body(second, "10.220.2.0/24", "10.220.2.1/24", generic=generic))
    assert status == 409 and "br-unit" in body["Err"]
    assert env.state.get_network(second) is None and env.links.links["br-unit"]["owner"] == first


def test_foreign_link_with_the_bridge_name_conflicts_and_survives(env):
    env.links.add_foreign("br-theirs", owner=None)
    nid = new_id()
    status, body = env.post("/NetworkDriver.CreateNetwork",
                            create_network_body(nid, generic={"secnet.bridge": "br-theirs"}))
    assert status == 409 and "br-theirs" in body["Err"]
    assert "br-theirs" in env.links.links and env.state.get_network(nid) is None


def test_kernel_failure_in_create_network_rolls_back(env):
    env.fw.fail["ensure"] = OSError("iptables: resource busy")
    nid = new_id()
    status, body = env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    assert status == 500 and nid[:12] in body["Err"]
    assert env.links.links == {} and env.state.get_network(nid) is None


def test_a_failed_retry_of_create_network_keeps_the_network(env):
    # Docker retries CreateNetwork after a crash: when the retry fails, the network
    # made by the first call (its row, its bridge) stays as it was.
    nid = new_id()
    assert env.post("/NetworkDriver.CreateNetwork", create_network_body(nid)) == (200, {})
    env.fw.fail["ensure"] = OSError("iptables: resource busy")
    status, _body = env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    assert status == 500
    assert env.state.get_network(nid) is not None and list(env.links.of_kind("bridge")) == ["sn-" + nid[:12]]


@pytest.mark.parametrize("failing", ["firewall", "tables"])
def test_create_network_rolls_back_whichever_of_its_side_by_side_steps_fails(tmp_path, failing):
    # The forward rules and the network's tables are written at the same time;
    # a failure of either one leaves neither behind.
    import threading

    from plugin.driver.driver import NullReconciler

    class Tables(NullReconciler):
        def __init__(self):
            self.nets, self.threads = set(), set()

        def network_added(self, net, endpoints=(), bridge_made=False):
            self.threads.add(threading.current_thread().name)
            if failing == "tables":
                raise OSError("nft: refused")
            self.nets.add(net.id)

        def network_removed(self, net):
            self.nets.discard(net.id)

    links, fw, tables = FakeLinks(), FakeFirewall(), Tables()
    if failing == "firewall":
        fw.fail["ensure"] = OSError("iptables: resource busy")
    driver = Driver(State(str(tmp_path / "state")), links, fw, tables)
    nid = new_id()
    resp = create_app(driver).test_client().post("/NetworkDriver.CreateNetwork",
                                                 data=json.dumps(create_network_body(nid)))
    status, body = resp.status_code, json.loads(resp.get_data(as_text=True))
    assert status == 500 and nid[:12] in body["Err"]
    assert links.links == {} and fw.rules == set() and tables.nets == set()
    assert driver.state.get_network(nid) is None
    assert tables.threads == {threading.current_thread().name}   # the tables on the verb's thread
    driver.state.close()


def test_create_endpoint_supplies_a_mac_only_when_none_was_given(env):
    nid, e1, e2 = new_id(), new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    status, body = env.post("/NetworkDriver.CreateEndpoint",
                            create_endpoint_body(nid, e1, "10.220.1.2/24"))
    assert status == 200 and body == {"Interface": {"MacAddress": "02:42:0a:dc:01:02"}}
    peer = env.state.get_endpoint(e1).veth_peer
    assert env.links.links[peer]["mac"] == "02:42:0a:dc:01:02"

    status, body = env.post("/NetworkDriver.CreateEndpoint",
                            create_endpoint_body(nid, e2, "10.220.1.3/24", mac="02:AA:BB:CC:DD:EE"))
    assert status == 200 and "MacAddress" not in json.dumps(body), body
    assert env.state.get_endpoint(e2).mac == "02:aa:bb:cc:dd:ee"


def test_create_endpoint_twice_answers_the_same(env):
    nid, eid = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    first = env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid))
    assert env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid)) == first
    assert len(env.links.of_kind("veth")) == 2  # one pair


def test_endpoint_address_must_be_in_the_subnet(env):
    nid, eid = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    status, body = env.post("/NetworkDriver.CreateEndpoint",
                            create_endpoint_body(nid, eid, "10.221.9.9/24"))
    assert status == 400 and "10.221.9.9" in body["Err"]
    status, body = env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid, ""))
    assert status == 400 and "Interface.Address" in body["Err"]
    assert env.links.of_kind("veth") == {} and env.state.endpoints() == []


def test_bad_segment_driver_opt_is_named(env):
    nid, eid = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    status, body = env.post("/NetworkDriver.CreateEndpoint",
                            create_endpoint_body(nid, eid, options={"secnet.segment": "bad name!"}))
    assert status == 400 and "secnet.segment" in body["Err"]
    status, body = env.post("/NetworkDriver.CreateEndpoint",
                            create_endpoint_body(nid, eid, options={"secnet.colour": "x"}))
    assert status == 400 and "secnet.colour" in body["Err"]
    assert env.state.endpoints() == []


def test_kernel_failure_in_create_endpoint_leaves_nothing(env):
    nid, eid = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(nid))
    env.links.fail["ensure_veth"] = OSError("no space")
    status, body = env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid))
    assert status == 500 and eid[:12] in body["Err"]
    assert env.links.of_kind("veth") == {} and env.state.get_endpoint(eid) is None


def test_join_returns_interface_and_gateways(env):
    nid, eid = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork",
             create_network_body(nid, pool6="fd00:220::/64", gateway6="fd00:220::1/64"))
    env.post("/NetworkDriver.CreateEndpoint",
             create_endpoint_body(nid, eid, "10.220.1.2/24", "fd00:220::2/64"))
    status, body = env.post("/NetworkDriver.Join", endpoint_body(nid, eid))
    assert status == 200
    peer = env.state.get_endpoint(eid).veth_peer
    assert body["InterfaceName"] == {"SrcName": peer, "DstPrefix": "eth"}
    assert peer in env.links.links
    assert body["Gateway"] == "10.220.1.1" and body["GatewayIPv6"] == "fd00:220::1"
    ep = env.state.get_endpoint(eid)
    assert ep.joined and ep.sandbox_key == "/var/run/docker/netns/0123456789ab"


def test_join_on_an_internal_network_has_no_gateway(env):
    nid, eid = new_id(), new_id()
    env.post("/NetworkDriver.CreateNetwork", create_network_body(nid, internal=True))
    env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid))
    status, body = env.post("/NetworkDriver.Join", endpoint_body(nid, eid))
    assert status == 200 and "Gateway" not in body and body["InterfaceName"]["DstPrefix"] == "eth"
    assert "StaticRoutes" not in body   # one subnet: nothing else on the link


def test_join_on_an_internal_network_of_several_subnets_routes_the_others_on_the_link(env):
    """U26-F3: with no gateway, members of an --internal network's other subnets were
    unreachable whatever the rules; they are on the bridge, so on the link."""
    nid, eid = new_id(), new_id()
    body = create_network_body(nid, internal=True)
    body["IPv4Data"] = _pools(("10.220.1.0/24", "10.220.1.1/24", None), ("10.220.2.0/24", "10.220.2.1/24", None),
                              ("10.220.3.0/24", "10.220.3.1/24", None))
    body["IPv6Data"] = _pools(("fd00:220::/64", "fd00:220::1/64", None), ("fd00:221::/64", "fd00:221::1/64", None))
    body["Options"]["com.docker.network.enable_ipv6"] = True
    assert env.post("/NetworkDriver.CreateNetwork", body) == (200, {})
    env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid, "10.220.2.7/24", "fd00:221::7/64"))
    status, resp = env.post("/NetworkDriver.Join", endpoint_body(nid, eid))
    assert status == 200 and "Gateway" not in resp and "GatewayIPv6" not in resp
    assert resp["StaticRoutes"] == [{"Destination": d, "RouteType": 1}
                                    for d in ("10.220.1.0/24", "10.220.3.0/24", "fd00:220::/64")]


def test_leave_and_delete_endpoint_remove_the_veth_and_row(env, joined):
    ep = env.state.get_endpoint(joined.eid)
    assert env.post("/NetworkDriver.Leave", endpoint_body(joined.nid, joined.eid)) == (200, {})
    assert env.state.get_endpoint(joined.eid).joined is False
    assert env.post("/NetworkDriver.DeleteEndpoint", endpoint_body(joined.nid, joined.eid)) == (200, {})
    assert ep.veth_host not in env.links.links and ep.veth_peer not in env.links.links
    assert env.state.get_endpoint(joined.eid) is None


def test_delete_of_unknown_objects_is_idempotent(env, joined):
    for path in ("/NetworkDriver.DeleteEndpoint", "/NetworkDriver.Leave"):
        assert env.post(path, endpoint_body(joined.nid, new_id())) == (200, {})
    assert env.post("/NetworkDriver.DeleteNetwork", {"NetworkID": new_id()}) == (200, {})
    for _ in range(2):
        assert env.post("/NetworkDriver.DeleteEndpoint", endpoint_body(joined.nid, joined.eid)) == (200, {})


@pytest.mark.parametrize("failing", [None, "firewall", "tables", "bridge"])
def test_delete_network_removes_the_forward_rules_beside_the_tables_and_the_bridge(tmp_path, failing):
    # The forward rules' removal (iptables processes) runs while the tables and then the
    # bridge go: here it waits to see the bridge gone, which a removal after it never
    # would. A failure of one step leaves the others done.
    import threading

    from plugin.driver.driver import NullReconciler

    class Tables(NullReconciler):
        def __init__(self):
            self.nets = set()

        def network_added(self, net, endpoints=(), bridge_made=False):
            self.nets.add(net.id)

        def network_removed(self, net):
            if failing == "tables":
                raise OSError("nft: refused")
            self.nets.discard(net.id)

    class Firewall(FakeFirewall):
        def remove(self, bridge, network_id):
            self.saw_bridge_gone = bridge_gone.wait(2)
            if failing == "firewall":
                raise RuntimeError("iptables-restore failed")
            super().remove(bridge, network_id)

    class Links(FakeLinks):
        def remove_link(self, name, owner=None):
            if failing == "bridge":
                bridge_gone.set()
                raise OSError("link del: device busy")
            removed = super().remove_link(name, owner)
            bridge_gone.set()
            return removed

    bridge_gone = threading.Event()
    links, fw, tables = Links(), Firewall(), Tables()
    driver = Driver(State(str(tmp_path / "state")), links, fw, tables)
    app, nid = create_app(driver).test_client(), new_id()
    assert app.post("/NetworkDriver.CreateNetwork", data=json.dumps(create_network_body(nid))).status_code == 200
    assert app.post("/NetworkDriver.DeleteNetwork", data=json.dumps({"NetworkID": nid})).status_code == 200
    assert fw.saw_bridge_gone   # side by side, not after it
    assert driver.state.get_network(nid) is None
    assert (fw.rules == set()) == (failing != "firewall")
    assert (tables.nets == set()) == (failing != "tables")
    assert (links.links == {}) == (failing != "bridge")
    driver.state.close()


def test_delete_network_removes_bridge_veths_rule_and_rows(env, joined):
    assert env.post("/NetworkDriver.DeleteNetwork", {"NetworkID": joined.nid}) == (200, {})
    assert env.links.links == {} and env.fw.rules == set()
    assert env.state.networks() == [] and env.state.endpoints() == []
    assert env.post("/NetworkDriver.DeleteNetwork", {"NetworkID": joined.nid}) == (200, {})


def test_oper_info_describes_the_endpoint(env, joined):
    status, body = env.post("/NetworkDriver.EndpointOperInfo", endpoint_body(joined.nid, joined.eid))
    ep = env.state.get_endpoint(joined.eid)
    assert status == 200 and body["Value"]["veth"] == ep.veth_host and body["Value"]["mac"] == ep.mac


def test_rename_containers_follows_the_engine_by_container_id(env, joined):
    cid = "ab" * 32
    env.state.put_endpoint(env.state.get_endpoint(joined.eid).evolve(container="api", container_id=cid))
    assert env.driver.rename_containers({cid: "api2", "cd" * 32: "other"}) == 1
    assert env.state.get_endpoint(joined.eid).container == "api2"
    assert env.driver.rename_containers({cid: "api2"}) == 0       # no change, no write


def _pools(*pairs):
    return [{"AddressSpace": "LocalDefault", "Pool": p, "Gateway": g, "AuxAddresses": aux}
            for p, g, aux in pairs]


def test_join_answers_the_gateway_of_each_addresses_own_subnet(env):
    """Several subnets per family (`--subnet` repeated): each endpoint gets its subnet's
    gateway, the bridge carries all of them; aux addresses are Docker's business."""
    nid = new_id()
    body = create_network_body(nid, pool6="fd00:220::/64", gateway6="fd00:220::1/64")
    body["IPv4Data"] = _pools(("10.220.1.0/24", "10.220.1.1/24", None),
                              ("10.220.2.0/24", "10.220.2.254/24", {"router": "10.220.2.5"}))
    body["IPv6Data"] = _pools(("fd00:220::/64", "fd00:220::1/64", None), ("fd00:221::/64", "fd00:221::1/64", None))
    assert env.post("/NetworkDriver.CreateNetwork", body) == (200, {})
    assert sorted(env.links.links[env.state.get_network(nid).bridge]["addrs"]) == sorted(
        ["10.220.1.1/24", "10.220.2.254/24", "fd00:220::1/64", "fd00:221::1/64"])
    cases = [("10.220.1.2/24", "fd00:221::2/64", "10.220.1.1", "fd00:221::1"),
             ("10.220.2.9/24", "fd00:220::9/64", "10.220.2.254", "fd00:220::1")]
    for v4, v6, gw4, gw6 in cases:
        eid = new_id()
        assert env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid, v4, v6))[0] == 200
        status, resp = env.post("/NetworkDriver.Join", endpoint_body(nid, eid))
        assert status == 200 and (resp["Gateway"], resp["GatewayIPv6"]) == (gw4, gw6)


def test_an_ipv6_only_network_and_endpoint(env):
    """No IPv4 pool (engines that can do IPv6-only): the endpoint has only an IPv6 address,
    Join answers only an IPv6 gateway, the MAC is derived from the endpoint id."""
    nid, eid = new_id(), new_id()
    body = create_network_body(nid, pool6="fd00:222::/64", gateway6="fd00:222::1/64")
    body["IPv4Data"] = []
    assert env.post("/NetworkDriver.CreateNetwork", body) == (200, {})
    status, resp = env.post("/NetworkDriver.CreateEndpoint", create_endpoint_body(nid, eid, "", "fd00:222::5/64"))
    assert status == 200 and resp["Interface"]["MacAddress"].startswith("02:")
    status, resp = env.post("/NetworkDriver.Join", endpoint_body(nid, eid))
    assert status == 200 and resp.get("GatewayIPv6") == "fd00:222::1" and "Gateway" not in resp


def test_an_ipv6_network_switches_ipv6_forwarding_on_as_docker_does(env):
    assert env.post("/NetworkDriver.CreateNetwork", create_network_body(new_id())) == (200, {})
    assert not getattr(env.links, "ipv6_forwarding", False)
    body = create_network_body(new_id(), pool="10.220.3.0/24", gateway="10.220.3.1/24",
                               pool6="fd00:223::/64", gateway6="fd00:223::1/64")
    assert env.post("/NetworkDriver.CreateNetwork", body) == (200, {})
    assert env.links.ipv6_forwarding is True
