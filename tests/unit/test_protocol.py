"""plugin.driver.protocol: Docker's request bodies into typed, validated requests."""
from __future__ import annotations

import dataclasses

import pytest

from driver_fakes import create_endpoint_body, create_network_body, endpoint_body, new_id
from plugin.errors import BadRequest
from plugin.driver.protocol import (CreateEndpointRequest, CreateNetworkRequest, EndpointRequest,
                             NetworkRequest, PoolData)


def test_create_network_as_docker_sends_it():
    nid = new_id().upper()
    body = create_network_body(nid, "10.220.1.0/24", "10.220.1.1/24", "fd00:220::/64",
                               "fd00:220::1/64", generic={"secnet.allow": "web->api:tcp/8080",
                                                          "com.docker.network.driver.mtu": "1400"})
    req = CreateNetworkRequest.from_wire(body)
    assert req.network_id == nid.lower()
    assert req.generic == {"secnet.allow": "web->api:tcp/8080", "com.docker.network.driver.mtu": "1400"}
    assert req.ipv6 is True and req.internal is False and req.docker_mtu == "1400"
    assert req.ipv4_data == (PoolData("10.220.1.0/24", "10.220.1.1/24"),)
    assert req.ipv6_data == (PoolData("fd00:220::/64", "fd00:220::1/64"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.network_id = "x"


def test_gateway_without_prefix_gets_the_pool_prefix():
    body = create_network_body(new_id(), "10.220.1.0/24", "10.220.1.1")
    assert CreateNetworkRequest.from_wire(body).ipv4_data[0].gateway == "10.220.1.1/24"
    body = create_network_body(new_id(), "10.220.1.0/24", "")
    assert CreateNetworkRequest.from_wire(body).ipv4_data[0].gateway is None


def test_internal_and_missing_options():
    req = CreateNetworkRequest.from_wire(create_network_body(new_id(), internal=True))
    assert req.internal is True and req.ipv6 is False
    req = CreateNetworkRequest.from_wire({"NetworkID": new_id()})
    assert (req.generic, req.ipv4_data, req.ipv6_data, req.docker_mtu) == ({}, (), (), None)


@pytest.mark.parametrize("body,named", [
    ({}, "NetworkID"),
    ({"NetworkID": ""}, "NetworkID"),
    ({"NetworkID": 42}, "NetworkID"),
    ({"NetworkID": "not-hex-at-all"}, "NetworkID"),
    ({"NetworkID": "abc"}, "NetworkID"),
])
def test_bad_network_id_is_named(body, named):
    with pytest.raises(BadRequest, match=named):
        CreateNetworkRequest.from_wire(body)
    with pytest.raises(BadRequest, match=named):
        NetworkRequest.from_wire(body)


@pytest.mark.parametrize("body", [None, [], "text", 3])
def test_body_must_be_an_object(body):
    for req_type in (CreateNetworkRequest, NetworkRequest, EndpointRequest, CreateEndpointRequest):
        with pytest.raises(BadRequest, match="JSON object"):
            req_type.from_wire(body)


@pytest.mark.parametrize("change,named", [
    (lambda b: b["IPv4Data"][0].update(Pool="10.220.1.0/33"), "IPv4Data Pool"),
    (lambda b: b["IPv4Data"][0].update(Pool="fd00:220::/64"), "IPv4Data Pool"),
    (lambda b: b["IPv4Data"][0].update(Gateway="fd00:220::1/64"), "IPv4Data Gateway"),
    (lambda b: b["IPv4Data"][0].update(Gateway=7), "IPv4Data Gateway"),
    (lambda b: b.update(IPv4Data=["x"]), "IPv4Data entry"),
    (lambda b: b.update(IPv6Data=[{"Pool": "10.220.1.0/24"}]), "IPv6Data Pool"),
    (lambda b: b["Options"].update({"com.docker.network.generic": {"secnet.mtu": 1400}}), "secnet.mtu"),
    (lambda b: b["Options"].update({"com.docker.network.generic": "x"}), "com.docker.network.generic"),
    (lambda b: b["Options"].update({"com.docker.network.enable_ipv6": "maybe"}),
     "com.docker.network.enable_ipv6"),
    (lambda b: b["Options"].update({"com.docker.network.internal": 2}), "com.docker.network.internal"),
    (lambda b: b.update(Options="x"), "Options"),
])
def test_bad_create_network_field_is_named(change, named):
    body = create_network_body(new_id())
    change(body)
    with pytest.raises(BadRequest) as err:
        CreateNetworkRequest.from_wire(body)
    assert named in str(err.value)


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("true", True),
                                            ("false", False), ("1", True), ("", False), (None, False)])
def test_boolean_options(value, expected):
    body = create_network_body(new_id())
    body["Options"]["com.docker.network.enable_ipv6"] = value
    assert CreateNetworkRequest.from_wire(body).ipv6 is expected


def test_create_endpoint_as_docker_sends_it():
    nid, eid = new_id(), new_id()
    body = create_endpoint_body(nid, eid, "10.220.1.2/24", "fd00:220::2/64", "02:AA:bb:cc:dd:ee",
                                options={"secnet.segment": "web"})
    req = CreateEndpointRequest.from_wire(body)
    assert (req.network_id, req.endpoint_id) == (nid, eid)
    assert (req.ipv4, req.ipv6, req.mac) == ("10.220.1.2/24", "fd00:220::2/64", "02:aa:bb:cc:dd:ee")
    assert req.options["secnet.segment"] == "web"
    req = CreateEndpointRequest.from_wire(create_endpoint_body(nid, eid, "10.220.1.2/24"))
    assert req.ipv6 is None and req.mac is None


@pytest.mark.parametrize("iface,named", [
    ({"Address": "fd00:220::2/64"}, "Interface.Address"),
    ({"Address": "10.220.1.300/24"}, "Interface.Address"),
    ({"Address": 5}, "Interface.Address"),
    ({"AddressIPv6": "10.220.1.2/24"}, "Interface.AddressIPv6"),
    ({"MacAddress": "02:42:0a"}, "Interface.MacAddress"),
    ({"MacAddress": 12}, "Interface.MacAddress"),
])
def test_bad_endpoint_interface_is_named(iface, named):
    body = create_endpoint_body(new_id(), new_id())
    body["Interface"].update(iface)
    with pytest.raises(BadRequest, match=named):
        CreateEndpointRequest.from_wire(body)


def test_endpoint_request_needs_both_ids_and_a_string_sandbox():
    nid, eid = new_id(), new_id()
    req = EndpointRequest.from_wire(endpoint_body(nid, eid, "/var/run/docker/netns/x"))
    assert (req.network_id, req.endpoint_id, req.sandbox_key) == (nid, eid, "/var/run/docker/netns/x")
    with pytest.raises(BadRequest, match="EndpointID"):
        EndpointRequest.from_wire({"NetworkID": nid})
    with pytest.raises(BadRequest, match="SandboxKey"):
        EndpointRequest.from_wire({"NetworkID": nid, "EndpointID": eid, "SandboxKey": ["x"]})
    with pytest.raises(BadRequest, match="Options"):
        EndpointRequest.from_wire({"NetworkID": nid, "EndpointID": eid, "Options": "x"})
