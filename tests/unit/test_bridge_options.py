"""A new bridge is made with what its backend asks of it (``Backend.bridge_options``), and
the backend is told so (``bridge_made``); a bridge that was there already is not "made"
(the backend checks it itself). Real Driver, State and Reconciler; fake links and backend."""
from __future__ import annotations

from driver_fakes import FakeFirewall, FakeLinks, create_network_body, new_id
from test_reconciler_unit import RecordingBackend, network

from plugin.driver.driver import Driver
from plugin.driver.protocol import CreateNetworkRequest
from plugin.driver.state import State
from plugin.enforce.ebpf.backend import EbpfBackend
from plugin.enforce.nftables.backend import NftBackend
from plugin.enforce.nftables.brhooks import MADE_ON
from plugin.enforce.reconciler import Reconciler
from plugin.kernel.links import bridge_name


class PlainBackend(RecordingBackend):
    def check_host(self):
        pass


class OptionsBackend(PlainBackend):
    bridge_options = MADE_ON


def make(tmp_path, backend):
    state = State(str(tmp_path / "state"))
    links = FakeLinks()
    return Driver(state, links, FakeFirewall(), Reconciler(state, {"nftables": backend})), links


def test_nftables_asks_for_both_br_netfilter_switches_and_ebpf_for_none():
    assert dict(NftBackend.bridge_options) == {"br_nf_call_iptables": 1, "br_nf_call_ip6tables": 1}
    assert EbpfBackend.bridge_options == ()


def test_a_new_bridge_is_made_with_the_backends_options_and_the_backend_told(tmp_path):
    backend = OptionsBackend()
    driver, links = make(tmp_path, backend)
    nid = new_id()
    driver.create_network(CreateNetworkRequest.from_wire(create_network_body(nid)))
    assert links.links[bridge_name(nid)]["options"] == dict(MADE_ON)
    assert backend.calls == [("network", nid)] and backend.bridge_made is True
    driver.state.close()


def test_a_retry_finds_its_bridge_there_and_the_backend_checks_it(tmp_path):
    backend = OptionsBackend()
    driver, links = make(tmp_path, backend)
    nid = new_id()
    req = CreateNetworkRequest.from_wire(create_network_body(nid))
    driver.create_network(req)
    driver.create_network(req)          # Docker retries after a crash: the bridge is there,
    assert backend.bridge_made is False  # its switches maybe off: the backend reads them
    driver.state.close()


def test_a_backend_without_options_gets_a_plain_bridge(tmp_path):
    backend = PlainBackend()
    driver, links = make(tmp_path, backend)
    nid = new_id()
    driver.create_network(CreateNetworkRequest.from_wire(create_network_body(nid)))
    assert links.links[bridge_name(nid)]["options"] == {}
    driver.state.close()


def test_a_repair_pass_never_claims_the_bridge_was_made(tmp_path):
    state = State(str(tmp_path / "state"))
    backend = OptionsBackend()
    rec = Reconciler(state, {"nftables": backend})
    net = network()
    state.put_network(net)
    assert rec.bridge_options(net) == MADE_ON
    rec.network_added(net, bridge_made=True)
    assert backend.bridge_made is True
    rec.reconcile(full=True)   # rewrites every network: its bridge was not made now
    assert backend.bridge_made is False
    state.close()
