"""CreateEndpoint's two kernel steps: the veth pair on the netlink thread while the port's
policy is written on the verb's thread (nftables), or the link first (eBPF); either
failing leaves neither behind (real Driver and State, fake links and reconciler)."""
from __future__ import annotations

import threading
import time

import pytest

from driver_fakes import FakeFirewall, FakeLinks, create_endpoint_body, create_network_body, new_id
from plugin.driver.driver import Driver, NullReconciler
from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest
from plugin.driver.state import State
from plugin.errors import Conflict, Internal
from plugin.kernel.links import veth_names


class Ports(NullReconciler):
    """Records which thread wrote each port, and whether its veth existed by then."""

    def __init__(self, links, attaches=False, fail=None, brings=False):
        self.links, self.attaches, self.fail, self.brings = links, attaches, fail, brings
        self.ports, self.log, self.grouped = set(), [], []

    def link_first(self, net):
        return self.attaches

    def brings_segment(self, net, ep):
        return self.brings

    def endpoint_changed(self, net, ep, grouped=False):
        self.log.append((threading.current_thread().name, ep.veth_host in self.links.links))
        self.grouped.append(grouped)
        if self.fail:
            raise self.fail
        self.ports.add(ep.id)

    def endpoint_removed(self, net, ep):
        self.log.append(("removed", ep.veth_host in self.links.links))
        self.ports.discard(ep.id)


def setup(tmp_path, **kw):
    links = FakeLinks()
    ports = Ports(links, **kw)
    driver = Driver(State(str(tmp_path / "state")), links, FakeFirewall(), ports)
    nid = new_id()
    driver.create_network(CreateNetworkRequest.from_wire(create_network_body(nid)))
    return driver, links, ports, nid


def create(driver, nid, eid):
    return driver.create_endpoint(CreateEndpointRequest.from_wire(create_endpoint_body(nid, eid)))


def test_nftables_writes_the_port_while_the_netlink_thread_makes_the_veth(tmp_path):
    driver, links, ports, nid = setup(tmp_path)
    eid = new_id()
    create(driver, nid, eid)
    ep = driver.state.get_endpoint(eid)
    assert links.veth_threads == ["fake-netlink"]
    assert ports.log[0][0] == threading.current_thread().name and ports.ports == {eid}
    assert ep.veth_host in links.links and ep.veth_peer in links.links
    assert ports.grouped == [True]   # the link writer groups the pair: the backend asks nothing
    driver.state.close()


def test_ebpf_gets_the_link_before_its_port(tmp_path):
    driver, links, ports, nid = setup(tmp_path, attaches=True)
    create(driver, nid, new_id())
    assert ports.log == [(threading.current_thread().name, True)] and links.veth_threads == []
    assert ports.grouped == [False]
    driver.state.close()


def test_a_join_that_brings_a_segment_writes_its_policy_then_makes_the_veth(tmp_path):
    driver, links, ports, nid = setup(tmp_path, brings=True)
    eid = new_id()
    create(driver, nid, eid)
    assert ports.log == [(threading.current_thread().name, False)] and ports.ports == {eid}
    assert links.veth_threads == [] and driver.state.get_endpoint(eid).veth_host in links.links
    assert ports.grouped == [True]
    driver.state.close()


def test_a_failed_port_write_removes_the_veth_made_meanwhile(tmp_path):
    driver, links, ports, nid = setup(tmp_path, fail=OSError("nft: refused"))
    eid = new_id()
    with pytest.raises(Internal, match=eid[:12]):
        create(driver, nid, eid)
    assert ports.log[-1] == ("removed", False)   # the veth was made, then removed before this
    assert links.of_kind("veth") == {} and driver.state.get_endpoint(eid) is None
    driver.state.close()


@pytest.mark.parametrize("error, raised", [(OSError("no space"), Internal), (None, Conflict)])
def test_a_failed_veth_removes_the_port_written_meanwhile(tmp_path, error, raised):
    driver, links, ports, nid = setup(tmp_path)
    eid = new_id()
    if error is not None:
        links.fail["ensure_veth"] = error
    else:   # someone else's interface carries the endpoint's veth name
        links.add_foreign(veth_names(eid)[0], kind="veth")
    with pytest.raises(raised):
        create(driver, nid, eid)
    assert ports.ports == set() and driver.state.get_endpoint(eid) is None
    assert [l for l in links.of_kind("veth").values() if l["owner"] == eid] == []
    driver.state.close()


class Tables(NullReconciler):
    """network_added: waits (up to 2 s) to see the network's row saved meanwhile, then fails or not."""

    def __init__(self, state_of, fail):
        self.state_of, self.fail, self.saw_row = state_of, fail, None

    def network_added(self, net, endpoints=(), bridge_made=False):
        deadline = time.monotonic() + 2
        while self.state_of().get_network(net.id) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        self.saw_row = self.state_of().get_network(net.id) is not None
        if self.fail:
            raise OSError("nft: refused")


@pytest.mark.parametrize("fail", [False, True])
def test_create_network_saves_its_row_while_the_tables_are_written(tmp_path, fail):
    tables = Tables(lambda: driver.state, fail)
    driver = Driver(State(str(tmp_path / "state")), FakeLinks(), FakeFirewall(), tables)
    nid = new_id()
    req = CreateNetworkRequest.from_wire(create_network_body(nid))
    if fail:
        with pytest.raises(Internal):
            driver.create_network(req)
    else:
        driver.create_network(req)
    assert tables.saw_row   # written beside the tables, not after them
    assert (driver.state.get_network(nid) is None) == fail
    assert (State(str(tmp_path / "state")).get_network(nid) is None) == fail   # on disk too
    driver.state.close()
