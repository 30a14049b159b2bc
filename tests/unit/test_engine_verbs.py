"""What newer engines send a remote driver, against the real Driver (fakes for
links and firewall): the rows of docs/engines.md that are about the verbs.
Bodies follow moby's source at the tag each test names."""
from __future__ import annotations

import pytest

from driver_fakes import (FakeFirewall, FakeLinks, create_endpoint_body, create_network_body,
                          endpoint_body, new_id)
from plugin.driver.driver import Driver
from plugin.errors import BadRequest
from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest, EndpointRequest
from plugin.driver.state import State

PORTMAP = "com.docker.network.portmap"


@pytest.fixture
def driver(tmp_path):
    return Driver(State(str(tmp_path / "state")), FakeLinks(), FakeFirewall())


def network(driver, **kw) -> str:
    nid = new_id()
    driver.create_network(CreateNetworkRequest.from_wire(create_network_body(nid, **kw)))
    return nid


def endpoint(driver, nid, **kw) -> str:
    eid = new_id()
    driver.create_endpoint(CreateEndpointRequest.from_wire(create_endpoint_body(nid, eid, **kw)))
    return eid


def verb(driver, name, nid, eid, options=None):
    body = endpoint_body(nid, eid)
    body["Options"] = options or {}
    return getattr(driver, name)(EndpointRequest.from_wire(body))


def test_api_1_44_driver_opt_on_run_is_an_endpoint_option(driver):
    # daemon/network.go@v25.0.17: every EndpointSettings.DriverOpts entry becomes
    # EndpointOptionGeneric -> a top-level key of CreateEndpoint's Options, the
    # same path as `docker network connect --driver-opt`.
    nid = network(driver)
    eid = endpoint(driver, nid, options={"secnet.segment": "web"})
    assert driver.state.get_endpoint(eid).segment == "web"


def test_api_1_44_bad_driver_opt_on_run_fails_the_endpoint(driver):
    nid = network(driver)
    with pytest.raises(BadRequest, match="secnet.segment"):
        endpoint(driver, nid, options={"secnet.segment": "not a name"})
    assert driver.state.endpoints(nid) == []


def test_api_1_44_per_endpoint_mac_address_is_kept(driver):
    # api/server/router/container/container_routes.go@v25.0.17: EndpointSettings.MacAddress
    # reaches CreateEndpoint as Interface.MacAddress; the driver must not change it.
    nid, eid = network(driver), new_id()
    body = create_endpoint_body(nid, eid, mac="02:42:0a:dc:01:09")
    assert driver.create_endpoint(CreateEndpointRequest.from_wire(body)) == {}
    assert driver.state.get_endpoint(eid).mac == "02:42:0a:dc:01:09"


def test_docker_own_endpoint_options_are_left_to_docker(driver):
    # 27.0 endpoint sysctls, 28.x endpoint ifname: com.docker.* keys secnet ignores.
    nid = network(driver)
    eid = endpoint(driver, nid, options={
        "com.docker.network.endpoint.sysctls": "net.ipv4.conf.IFNAME.log_martians=1",
        "com.docker.network.endpoint.ifname": "eth7"})
    assert driver.state.get_endpoint(eid) is not None


def test_gateway_moves_revoke_then_program_again_without_leave(driver):
    # daemon/libnetwork/drivers/remote/driver.go@docker-v29.7.2: when another network
    # becomes the gateway (gw-priority, 28.0+), Revoke is sent without Leave, and
    # ProgramExternalConnectivity again when this endpoint is the gateway once more.
    nid = network(driver)
    eid = endpoint(driver, nid)
    verb(driver, "join", nid, eid)
    ports = {PORTMAP: [{"Proto": 6, "IP": "", "Port": 8080, "HostIP": "127.0.0.1",
                        "HostPort": 0, "HostPortEnd": 0}]}
    verb(driver, "program_external_connectivity", nid, eid, ports)
    first = driver.state.get_endpoint(eid).ports
    assert len(first) == 1
    verb(driver, "revoke_external_connectivity", nid, eid)
    assert driver.state.get_endpoint(eid).ports == ()
    verb(driver, "program_external_connectivity", nid, eid, ports)
    assert len(driver.state.get_endpoint(eid).ports) == 1
    verb(driver, "revoke_external_connectivity", nid, eid)
    verb(driver, "leave", nid, eid)
    assert driver.state.get_endpoint(eid).ports == ()


def test_rollback_delete_of_an_unknown_endpoint_is_fine(driver):
    # libnetwork/drivers/remote/driver.go@v27.5.1: a failed CreateEndpoint or Join is
    # rolled back with DeleteEndpoint / Leave, also for what the driver never made.
    nid = network(driver)
    assert verb(driver, "delete_endpoint", nid, new_id()) == {}
    assert verb(driver, "leave", nid, new_id()) == {}


def test_retried_create_endpoint_after_a_plugin_restart_answers_the_same(driver):
    # pkg/plugins/client.go@v25.0.17..docker-v29.7.2: calls are retried for 30 s
    # while the plugin's socket does not answer: a verb may arrive twice.
    nid, eid = network(driver), new_id()
    body = create_endpoint_body(nid, eid)
    first = driver.create_endpoint(CreateEndpointRequest.from_wire(body))
    again = driver.create_endpoint(CreateEndpointRequest.from_wire(body))
    assert first == again and len(driver.state.endpoints(nid)) == 1


def test_ipv6_only_network_of_docker_28_is_accepted(driver):
    # libnetwork/netlabel/labels.go@v28.0.0 com.docker.network.enable_ipv4; with
    # `--ipv4=false` IPv4Data is empty and only IPv6 pools come.
    nid = new_id()
    body = create_network_body(nid, pool6="fd00:220::/64", gateway6="fd00:220::1/64")
    body["IPv4Data"] = []
    body["Options"]["com.docker.network.enable_ipv4"] = False
    driver.create_network(CreateNetworkRequest.from_wire(body))
    eid = endpoint(driver, nid, address="", address6="fd00:220::2/64")
    ep = driver.state.get_endpoint(eid)
    assert ep.ipv4 is None and ep.ipv6 == "fd00:220::2/64"


def test_verbs_that_change_nothing_write_nothing(driver, monkeypatch):
    # `docker run` without -p: ProgramExternalConnectivity publishes nothing, and a
    # retried Join repeats the first; neither may cost a state write (an fsync).
    nid = network(driver)
    eid = endpoint(driver, nid)
    writes = []
    put = driver.state.put_endpoints
    monkeypatch.setattr(driver.state, "put_endpoints",
                        lambda recs, durable=True: (writes.append(list(recs)), put(recs, durable)))
    verb(driver, "join", nid, eid)
    assert len(writes) == 1 and writes[0][0].joined
    verb(driver, "program_external_connectivity", nid, eid)
    verb(driver, "join", nid, eid)
    assert len(writes) == 1
    ports = {PORTMAP: [{"Proto": 6, "IP": "", "Port": 8080, "HostIP": "127.0.0.1",
                        "HostPort": 0, "HostPortEnd": 0}]}
    verb(driver, "program_external_connectivity", nid, eid, ports)
    assert len(writes) == 2 and len(driver.state.get_endpoint(eid).ports) == 1
