"""HostIP keeps Docker's meaning (U18-F5): ``-p 0.0.0.0:P:C`` publishes on IPv4
only, ``-p [::]:P:C`` on IPv6 only, and only a binding without HostIP on both,
in everything that reads a binding: the parsed port map, the nft maps
``pub4``/``pub6``, eBPF's ``published`` map, the held host-port sockets, eBPF's
hairpin log, conntrack's claim of a newly published port and ``explain``.
(The e2e test with real packets: tests/e2e/test_published_families_e2e.py.)"""
from __future__ import annotations

import errno
import socket

import pytest

from plugin.driver.portmap import PORTMAP, parse_portmap
from plugin.kernel import addresses
from plugin.enforce.backend import DropEvent, Port
from plugin.enforce.ebpf.events import hairpin_target
from plugin.enforce.ebpf.maps import PUB_KEY, published_entries
from plugin.enforce.nftables.elements import port_elements
from plugin.kernel.conntrack import Entry, Tuple, claimed
from plugin.driver.hostports import _bind_all

V4, V6 = "10.239.7.2", "fd00:239:7::2"
GATEWAYS = ("10.239.7.1", "fd00:239:7::1")


def port(host_ip: str) -> Port:
    return Port("ep1", "snv1", "02:42:0a:ef:07:02", V4, V6, identity=300, segment="web",
                published=(("tcp", host_ip, 18400, 8080),))


def test_parse_keeps_the_family_of_a_wildcard_host_ip():
    raw = [{"Proto": 6, "Port": 80, "HostIP": ip, "HostPort": 18400} for ip in ("0.0.0.0", "::", "", "0:0::0")]
    assert [b.host_ip for b in parse_portmap({PORTMAP: raw})] == ["0.0.0.0", "::", "", "::"]
    assert [addresses.host_families(ip) for ip in ("0.0.0.0", "::", "")] == [(4,), (6,), (4, 6)]


@pytest.mark.parametrize("host_ip, want4, want6", [
    ("0.0.0.0", True, False), ("::", False, True), ("", True, True)])
def test_nft_maps_publish_on_the_families_docker_asked_for(host_ip, want4, want6):
    elements = port_elements(port(host_ip))
    pub4, pub6 = elements.get("pub4", {}), elements.get("pub6", {})
    assert bool(pub4) == want4 and bool(pub6) == want6, (pub4, pub6)
    if want4:   # every IPv4 address: the prefix 0.0.0.0/0, not the address 0.0.0.0
        ((key, value),) = pub4.items()
        assert key[0] == (0, 2**32 - 1) and value == (V4, 8080)
    if want6:
        ((key, value),) = pub6.items()
        assert key[0] == (0, 2**128 - 1) and value == (V6, 8080)


@pytest.mark.parametrize("host_ip, families", [("0.0.0.0", {4}), ("::", {6}), ("", {4, 6})])
def test_ebpf_published_map_holds_the_families_docker_asked_for(host_ip, families):
    keys = [PUB_KEY.unpack(k) for k in published_entries(port(host_ip))]
    assert {k[0] for k in keys} == families
    assert all(k[3] == bytes(16) for k in keys), "a wildcard binding is the all-zero (any address) key"


def _free_port() -> int:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _can_bind(family, addr: str, p: int) -> bool:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, p))
        return True
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        return False
    finally:
        s.close()


@pytest.mark.parametrize("host_ip, held4, held6", [
    ("0.0.0.0", True, False), ("::", False, True), ("", True, True)])
def test_held_sockets_take_the_port_on_the_families_docker_asked_for(host_ip, held4, held6):
    for _ in range(5):   # a port another program takes in between: try another
        p = _free_port()
        try:
            _p, socks = _bind_all("tcp", host_ip, p)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    try:
        assert _can_bind(socket.AF_INET, "0.0.0.0", p) is not held4
        assert _can_bind(socket.AF_INET6, "::", p) is not held6
    finally:
        for s in socks:
            s.close()


def test_ebpf_hairpin_log_names_the_member_only_in_the_published_family():
    def event(dst, family):
        return DropEvent(network="n", reason="no_rule", family=family, proto=6,
                         src="10.239.7.3" if family == 4 else "fd00:239:7::3", dst=dst, port=18400)
    for host_ip, hit4, hit6 in (("0.0.0.0", True, False), ("::", False, True), ("", True, True)):
        e4, e6 = event(GATEWAYS[0], 4), event(GATEWAYS[1], 6)
        assert (hairpin_target(e4, GATEWAYS, [port(host_ip)]).dst == V4) == hit4, host_ip
        assert (hairpin_target(e6, GATEWAYS, [port(host_ip)]).dst == V6) == hit6, host_ip


def test_conntrack_claims_only_flows_of_the_published_family():
    def to_host(dst):
        return Entry(6 if ":" in dst else 4, Tuple("tcp", dst, dst, 40000, 18400),
                     Tuple("tcp", dst, dst, 18400, 40000), 0)
    four, six = to_host("192.0.2.1"), to_host("2001:db8::1")
    is_host = {"192.0.2.1", "2001:db8::1"}.__contains__
    assert claimed([four, six], "tcp", "0.0.0.0", 18400, V4, is_host) == [four]
    assert claimed([four, six], "tcp", "::", 18400, V6, is_host) == [six]
    assert claimed([four, six], "tcp", "", 18400, V4, is_host) == [four, six]


def test_covers_a_specific_address_only_itself():
    assert addresses.covers("192.0.2.1", "192.0.2.1", lambda a: False)
    assert not addresses.covers("192.0.2.1", "192.0.2.2", lambda a: True)
    assert not addresses.covers("0.0.0.0", "2001:db8::1", lambda a: True)
    assert not addresses.covers("0.0.0.0", "192.0.2.9", lambda a: False)   # wildcard: the host's addresses only


def test_a_binding_on_a_family_the_container_lacks_is_refused_not_held(tmp_path):
    """`-p [::]:P:C` on an IPv4-only network would hold the port and publish nothing
    (Docker's bridge proxies it to IPv4; secnet does not): a clear error instead."""
    from driver_fakes import (FakeFirewall, FakeLinks, create_endpoint_body,  # noqa: PLC0415
                              create_network_body, endpoint_body, new_id)
    from plugin.driver.driver import Driver   # noqa: PLC0415
    from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest, EndpointRequest  # noqa: PLC0415
    from plugin.driver.state import State     # noqa: PLC0415
    from plugin.errors import BadRequest      # noqa: PLC0415
    driver = Driver(State(str(tmp_path / "state")), FakeLinks(), FakeFirewall())
    nid, eid = new_id(), new_id()
    driver.create_network(CreateNetworkRequest.from_wire(create_network_body(nid)))
    driver.create_endpoint(CreateEndpointRequest.from_wire(create_endpoint_body(nid, eid)))
    p = _free_port()
    for host_ip in ("::", "fd00:239:7::1"):
        body = dict(endpoint_body(nid, eid), Options={PORTMAP: [
            {"Proto": 6, "Port": 8080, "HostIP": host_ip, "HostPort": p, "HostPortEnd": p}]})
        with pytest.raises(BadRequest) as err:
            driver.program_external_connectivity(EndpointRequest.from_wire(body))
        assert f"[{host_ip}]:{p}/tcp" in str(err.value) and "no IPv6 address" in str(err.value), err.value
        assert driver.state.get_endpoint(eid).ports == ()
        assert _can_bind(socket.AF_INET6, "::", p), "the refused port is held"
    driver.state.close()
