"""Every change the reconciler makes ends the flows the new state does not allow
(a stand-in backend and conntrack table; the judging is plugin.kernel.conntrack's)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.reconciler import Reconciler
from plugin.kernel.conntrack import Entry, Flows, Tuple
from test_reconciler_unit import RecordingBackend
from segmentation.options import parse_network_options

NID = "ab" * 32
WEB, API = "10.230.0.2", "10.230.0.3"
DNAT = 1 << 5


class Kernel:
    def __init__(self, entries):
        self.have, self.deleted = list(entries), []

    def entries(self, addresses=None):
        return [e for e in self.have if e not in self.deleted]

    def delete(self, entries):
        self.deleted += list(entries)
        return len(entries)


def flow(proto, src, dst, sport, dport, rsrc=None, rsport=None, nat=0):
    return Entry(4, Tuple(proto, src, dst, sport, dport),
                 Tuple(proto, rsrc or dst, src, rsport or dport, sport), nat)


PUBLISHED = flow("udp", "127.0.0.1", "127.0.0.1", 40000, 38417, rsrc=API, rsport=5353, nat=DNAT)
TO_HOST = flow("udp", "127.0.0.1", "127.0.0.1", 40001, 38417)              # before the port was published
EAST_WEST = flow("tcp", WEB, API, 40002, 8080)


def net(rules="web->api:tcp/8080"):
    return NetworkRecord(id=NID, bridge="sn-x", mtu=1500,
                         options=parse_network_options({"secnet.allow": rules}),
                         ipv4=(("10.230.0.0/24", "10.230.0.1/24"),))


def ep(n, segment, addr, ports=()):
    return EndpointRecord(id=str(n) * 64, network_id=NID, veth_host=f"snv{n}", veth_peer=f"snp{n}",
                          mac=f"02:00:00:00:00:0{n}", ipv4=f"{addr}/24", segment=segment, ports=ports)


@pytest.fixture
def world(tmp_path):
    state = State(str(tmp_path / "state"))
    kernel = Kernel([PUBLISHED, TO_HOST, EAST_WEST])
    web, api = ep(1, "web", WEB), ep(2, "api", API, ports=(("udp", "", 38417, 5353),))
    state.put_network(net())
    state.put_endpoints([web, api])
    rec = Reconciler(state, {"nftables": RecordingBackend()}, flows=Flows(kernel))
    rec.network_added(net())
    yield rec, kernel, web, api
    state.close()


def test_publishing_claims_the_ports_flows(world):
    rec, kernel, web, api = world
    rec.endpoint_changed(net(), replace(api, ports=()))
    kernel.deleted.clear()
    kernel.have = [TO_HOST, EAST_WEST]
    rec.endpoint_changed(net(), api)                       # -p again (a new container, say)
    assert kernel.deleted == [TO_HOST]


def test_unpublishing_ends_the_flows_to_the_port(world):
    rec, kernel, web, api = world
    rec.endpoint_changed(net(), replace(api, ports=()))
    assert kernel.deleted == [PUBLISHED]


def test_quarantine_and_segment_changes_end_the_endpoints_flows(world):
    rec, kernel, web, api = world
    rec.endpoint_changed(net(), replace(web, segment="db"))       # db->api is not allowed
    assert kernel.deleted == [EAST_WEST]
    kernel.deleted.clear()
    rec.endpoint_changed(net(), replace(api, segment=None, quarantine="bad label"))
    assert set(kernel.deleted) == {PUBLISHED, EAST_WEST}


def test_removal_forgets_entries_naming_the_address_in_either_tuple(world):
    rec, kernel, web, api = world
    rec.endpoint_removed(net(), api)
    assert set(kernel.deleted) == {PUBLISHED, EAST_WEST}


def test_a_policy_edit_ends_published_flows_it_no_longer_allows(world):
    rec, kernel, web, api = world
    rec.policy_changed(net("web->api:tcp/8080 10.0.0.0/8->api:udp/5353"))
    assert kernel.deleted == [PUBLISHED]                     # the host is not 10.0.0.0/8
    kernel.deleted.clear()
    rec.policy_changed(net(""))
    assert kernel.deleted == [EAST_WEST]


def test_audit_mode_ends_nothing_and_the_switch_to_enforce_ends_what_it_denies(world):
    rec, kernel, web, api = world
    audit = net("").evolve(options=parse_network_options({"secnet.allow": "", "secnet.mode": "audit"}))
    rec.policy_changed(audit)
    assert kernel.deleted == []                              # audit: nothing is denied
    rec.policy_changed(net(""))
    assert kernel.deleted == [EAST_WEST]
