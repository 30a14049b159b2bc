"""A hairpin drop on eBPF is logged as nftables logs it (user8 U8-F3): the member
behind the published port and its container port, not the host's address and port."""
from __future__ import annotations

from plugin.enforce.backend import DropEvent, Port
from plugin.enforce.ebpf.events import hairpin_target
from segmentation.identities import QUARANTINED

GATEWAYS = ("10.239.5.1", "fd00:239:5::1")
API = Port("ep1", "sn1", "02:42:0a:ef:05:02", "10.239.5.2", "fd00:239:5::2", identity=7,
           published=(("tcp", "", 18801, 8080), ("udp", "10.239.5.1", 18802, 53)))
DB = Port("ep2", "sn2", "02:42:0a:ef:05:03", "10.239.5.3", identity=8)


def event(dst: str, port: int, proto: int = 6, family: int = 4) -> DropEvent:
    return DropEvent(network="abc", reason="no_rule", family=family, proto=proto,
                     src="10.239.5.3" if family == 4 else "fd00:239:5::3", dst=dst, port=port)


def test_a_published_port_on_every_address_reached_through_the_gateway_names_the_member():
    got = hairpin_target(event("10.239.5.1", 18801), GATEWAYS, [DB, API])
    assert (got.dst, got.port, got.src) == ("10.239.5.2", 8080, "10.239.5.3")
    six = hairpin_target(event("fd00:239:5::1", 18801, family=6), GATEWAYS, [API])
    assert (six.dst, six.port) == ("fd00:239:5::2", 8080)


def test_a_port_published_on_one_address_matches_that_address_and_protocol_only():
    assert hairpin_target(event("10.239.5.1", 18802, proto=17), GATEWAYS, [API]).dst == "10.239.5.2"
    for other in (event("10.239.5.1", 18802, proto=6), event("10.239.5.1", 18803, proto=17)):
        assert hairpin_target(other, GATEWAYS, [API]) == other


def test_other_drops_are_left_as_they_are():
    outside = event("10.239.99.7", 18801)          # not the host: no DNAT would happen
    icmp = event("10.239.5.1", 0, proto=1)
    quarantined = Port("ep3", "sn3", "02:42:0a:ef:05:04", "10.239.5.4", identity=QUARANTINED,
                       published=(("tcp", "", 18801, 8080),))
    assert hairpin_target(outside, GATEWAYS, [API]) == outside
    assert hairpin_target(icmp, GATEWAYS, [API]) == icmp
    alone = event("10.239.5.1", 18801)
    assert hairpin_target(alone, GATEWAYS, [quarantined]) == alone


def test_a_port_published_on_every_address_reached_through_another_host_address_names_the_member():
    """(U12-F4) the host's LAN address is as good as the gateway: the kernel DNATs both."""
    lan = {"192.0.2.10", "2001:db8::10"}
    got = hairpin_target(event("192.0.2.10", 18801), GATEWAYS, [API], is_local=lan.__contains__)
    assert (got.dst, got.port) == ("10.239.5.2", 8080)
    six = hairpin_target(event("2001:db8::10", 18801, family=6), GATEWAYS, [API], is_local=lan.__contains__)
    assert (six.dst, six.port) == ("fd00:239:5::2", 8080)
    elsewhere = event("192.0.2.11", 18801)         # not the host's: no DNAT, an egress drop
    assert hairpin_target(elsewhere, GATEWAYS, [API], is_local=lan.__contains__) == elsewhere
    loop = event("127.0.0.1", 18801)               # a container's loopback flow: dropped as sent
    assert hairpin_target(loop, GATEWAYS, [API], is_local=lambda a: True) == loop
