"""The driver keeps one permanent neighbour entry on the bridge per endpoint address
(plugin.kernel.neighbours): made with the veth at CreateEndpoint on both backends'
paths, gone at DeleteEndpoint and with a failed create, put back and pruned at
restore (real Driver and State, fake links)."""
from __future__ import annotations

import pytest

from driver_fakes import FakeFirewall, FakeLinks, create_endpoint_body, create_network_body, new_id
from plugin.driver.driver import Driver, NullReconciler
from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest, EndpointRequest
from plugin.driver.state import State
from plugin.errors import Internal

POOL6, GW6 = "fd00:220:1::/64", "fd00:220:1::1/64"


class Backend(NullReconciler):
    def __init__(self, link_first=False, fail=None):
        self.first, self.fail = link_first, fail

    def link_first(self, net):
        return self.first

    def endpoint_changed(self, net, ep, grouped=False):
        if self.fail:
            raise self.fail


def make(tmp_path, **kw):
    links = FakeLinks()
    driver = Driver(State(str(tmp_path / "state")), links, FakeFirewall(), Backend(**kw))
    nid = new_id()
    driver.create_network(CreateNetworkRequest.from_wire(
        create_network_body(nid, pool6=POOL6, gateway6=GW6)))
    return driver, links, nid, driver.state.get_network(nid).bridge


def create(driver, nid, eid, address, address6="", mac=""):
    body = create_endpoint_body(nid, eid, address=address, address6=address6, mac=mac)
    return driver.create_endpoint(CreateEndpointRequest.from_wire(body))


def delete(driver, nid, eid):
    driver.delete_endpoint(EndpointRequest.from_wire({"NetworkID": nid, "EndpointID": eid}))


@pytest.mark.parametrize("link_first", [False, True], ids=["nftables", "ebpf"])
def test_create_endpoint_writes_an_entry_per_address_and_delete_removes_them(tmp_path, link_first):
    driver, links, nid, bridge = make(tmp_path, link_first=link_first)
    a, b = new_id(), new_id()
    create(driver, nid, a, "10.220.1.2/24", "fd00:220:1::2/64")
    create(driver, nid, b, "10.220.1.3/24", mac="02:00:00:00:00:b3")
    mac_a = driver.state.get_endpoint(a).mac
    assert links.neighbours(bridge) == {"10.220.1.2": mac_a, "fd00:220:1::2": mac_a,
                                        "10.220.1.3": "02:00:00:00:00:b3"}
    delete(driver, nid, a)
    assert links.neighbours(bridge) == {"10.220.1.3": "02:00:00:00:00:b3"}
    driver.state.close()


def test_a_failed_create_leaves_no_entry(tmp_path):
    driver, links, nid, bridge = make(tmp_path, fail=OSError("nft: refused"))
    with pytest.raises(Internal):
        create(driver, nid, new_id(), "10.220.1.2/24", "fd00:220:1::2/64")
    assert links.neighbours(bridge) == {}
    driver.state.close()


def test_delete_leaves_the_entry_of_an_address_another_endpoint_took_since(tmp_path):
    """An address given again (with another MAC) before the old endpoint's delete
    arrives keeps the new endpoint's entry."""
    driver, links, nid, bridge = make(tmp_path)
    old, new = new_id(), new_id()
    create(driver, nid, old, "10.220.1.2/24", mac="02:00:00:00:00:01")
    create(driver, nid, new, "10.220.1.2/24", mac="02:00:00:00:00:02")
    delete(driver, nid, old)
    assert links.neighbours(bridge) == {"10.220.1.2": "02:00:00:00:00:02"}
    driver.state.close()


def test_restore_puts_back_missing_entries_and_prunes_stale_ones(tmp_path):
    driver, links, nid, bridge = make(tmp_path)
    eid = new_id()
    create(driver, nid, eid, "10.220.1.2/24", "fd00:220:1::2/64")
    mac = driver.state.get_endpoint(eid).mac
    have = links.neighbours(bridge)
    del have["fd00:220:1::2"]                        # lost meanwhile
    have["10.220.1.9"] = "02:00:00:00:00:09"         # an endpoint that went while we were down
    driver.restore()
    assert links.neighbours(bridge) == {"10.220.1.2": mac, "fd00:220:1::2": mac}
    driver.state.close()
