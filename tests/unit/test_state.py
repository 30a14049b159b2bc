"""plugin.driver.state: networks and endpoints persisted in SQLite."""
from __future__ import annotations

import os
import stat

import pytest

from driver_fakes import new_id
from plugin.driver.state import EndpointRecord, NetworkRecord, State


def network(nid=None, **kw) -> NetworkRecord:
    nid = nid or new_id()
    fields = dict(id=nid, bridge="sn-" + nid[:12], mtu=1400,
                  options={"rules": ["web->api:tcp/8080"], "intra": "allow"},
                  ipv4=(("10.220.1.0/24", "10.220.1.1/24"),),
                  ipv6=(("fd00:220::/64", "fd00:220::1/64"),), internal=False)
    fields.update(kw)
    return NetworkRecord(**fields)


def endpoint(net_id, eid=None, **kw) -> EndpointRecord:
    eid = eid or new_id()
    fields = dict(id=eid, network_id=net_id, veth_host="snv" + eid[:11], veth_peer="snp" + eid[:11],
                  mac="02:42:0a:dc:01:02", ipv4="10.220.1.2/24", ipv6="fd00:220::2/64",
                  segment_opt="web", segment="web", container="web-1", container_id=new_id(),
                  sandbox_key="/var/run/docker/netns/abc", joined=True,
                  ports=((6, "0.0.0.0", 8080, 18080),), extra={"k": "v"})
    fields.update(kw)
    return EndpointRecord(**fields)


@pytest.fixture
def state(tmp_path):
    st = State(str(tmp_path / "state"))
    yield st
    st.close()


def test_network_round_trip(state):
    rec = network()
    state.put_network(rec)
    assert state.get_network(rec.id) == rec
    assert state.networks() == [rec]
    assert rec.gateways() == ["10.220.1.1/24", "fd00:220::1/64"]


def test_endpoint_round_trip(state):
    net = network()
    state.put_network(net)
    ep = endpoint(net.id)
    state.put_endpoint(ep)
    assert state.get_endpoint(ep.id) == ep
    assert state.endpoints(net.id) == [ep] and state.endpoints() == [ep]
    bare = EndpointRecord(id=new_id(), network_id=net.id, veth_host="a", veth_peer="b", mac="02:00:00:00:00:01")
    state.put_endpoint(bare)
    assert state.get_endpoint(bare.id) == bare


def test_put_replaces_and_evolve_keeps_the_rest(state):
    net = network()
    state.put_network(net)
    ep = endpoint(net.id)
    state.put_endpoint(ep)
    state.put_endpoint(ep.evolve(joined=False, sandbox_key=None))
    got = state.get_endpoint(ep.id)
    assert got.joined is False and got.sandbox_key is None and got.mac == ep.mac
    assert len(state.endpoints()) == 1
    state.put_network(network(net.id, mtu=9000))
    assert state.get_network(net.id).mtu == 9000 and len(state.networks()) == 1


def test_survives_reopening(tmp_path):
    first = State(str(tmp_path))
    net = network()
    ep = endpoint(net.id)
    first.put_network(net)
    first.put_endpoints([ep, endpoint(net.id)])
    first.close()
    again = State(str(tmp_path))
    try:
        assert again.get_network(net.id) == net and again.get_endpoint(ep.id) == ep
        assert len(again.endpoints(net.id)) == 2
    finally:
        again.close()


def test_delete_network_deletes_its_endpoints_only(state):
    a, b = network(), network()
    for n in (a, b):
        state.put_network(n)
    a_eps = [endpoint(a.id) for _ in range(3)]
    b_ep = endpoint(b.id)
    state.put_endpoints(a_eps + [b_ep])
    state.delete_network(a.id)
    assert state.get_network(a.id) is None
    assert all(state.get_endpoint(e.id) is None for e in a_eps)
    assert state.networks() == [b] and state.endpoints() == [b_ep]


def test_missing_rows_and_deletes(state):
    assert state.get_network(new_id()) is None and state.get_endpoint(new_id()) is None
    state.delete_network(new_id())
    state.delete_endpoint(new_id())
    net = network()
    state.put_network(net)
    ep = endpoint(net.id)
    state.put_endpoint(ep)
    state.delete_endpoint(ep.id)
    assert state.get_endpoint(ep.id) is None and state.get_network(net.id) == net


def test_state_dir_is_private(tmp_path):
    st = State(str(tmp_path / "new" / "dir"))
    st.close()
    mode = stat.S_IMODE(os.stat(tmp_path / "new" / "dir").st_mode)
    assert mode & 0o077 == 0, oct(mode)
    assert os.path.exists(tmp_path / "new" / "dir" / "state.db")


def test_an_endpoint_written_without_fsync_is_committed_and_later_writes_fsync_again(tmp_path):
    state = State(str(tmp_path / "state"))
    net = network()
    state.put_network(net)
    ep = endpoint(net.id)
    state.put_endpoint(ep, durable=False)
    assert state._db.execute("PRAGMA synchronous").fetchone() == (2,)   # FULL again
    other = State(str(tmp_path / "state"))   # another connection reads the committed row
    assert other.get_endpoint(ep.id) == ep
    other.close()
    state.close()


def test_join_and_create_endpoint_write_their_records_without_fsync(tmp_path):
    from driver_fakes import FakeFirewall, FakeLinks, create_endpoint_body, create_network_body, endpoint_body
    from plugin.driver.driver import Driver
    from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest, EndpointRequest

    class Recording(State):
        def put_endpoints(self, recs, durable=True):
            self.writes.append(durable)
            super().put_endpoints(recs, durable)
    state = Recording(str(tmp_path / "state"))
    state.writes = []
    driver = Driver(state, FakeLinks(), FakeFirewall())
    nid, eid = new_id(), new_id()
    driver.create_network(CreateNetworkRequest.from_wire(create_network_body(nid)))
    driver.create_endpoint(CreateEndpointRequest.from_wire(create_endpoint_body(nid, eid)))
    driver.join(EndpointRequest.from_wire(endpoint_body(nid, eid)))
    assert state.writes == [False, False] and state.get_endpoint(eid).joined
    state.close()
