"""Permanent neighbour entries on the bridge (plugin.kernel.neighbours), against the real
kernel in a throwaway namespace: through Netlink, and through the Driver's CreateEndpoint /
DeleteEndpoint / restore on both backends' orders (veth on the netlink thread beside the
port's policy for nftables, the link first for eBPF; the backend itself is a stand-in:
the entries are the links layer's)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nsfixtures import InNamespace
from plugin.driver.driver import Driver, NullReconciler
from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest, EndpointRequest
from plugin.driver.state import State
from plugin.kernel.links import Netlink

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from driver_fakes import FakeFirewall, create_endpoint_body, create_network_body  # noqa: E402

MAC, OTHER = "02:42:0a:dc:00:02", "02:42:0a:dc:00:09"


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def neighbours(netns, dev: str) -> dict:
    """{address: (lladdr, states)} of ``dev``'s neighbour table."""
    out = subprocess.run(["ip", "-n", netns.name, "-j", "neigh", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return {n["dst"]: (n.get("lladdr"), n.get("state", [])) for n in json.loads(out or "[]")}


@pytest.fixture
def bridge(nl, netns):
    nl.ensure_bridge("br-t", new_id(), 1500, ["10.220.0.1/24", "fd00:220::1/64"])
    return "br-t"


def test_ensure_veth_writes_permanent_entries_with_the_endpoints_mac(nl, netns, bridge):
    ep = new_id()
    for _ in range(2):   # idempotent
        nl.ensure_veth("snv-t", "snp-t", bridge, ep, 1500, MAC, ("10.220.0.2/24", "fd00:220::2/64", None))
    assert neighbours(netns, bridge) == {"10.220.0.2": (MAC, ["PERMANENT"]),
                                         "fd00:220::2": (MAC, ["PERMANENT"])}
    assert nl.start_veth("snv-t", "snp-t", bridge, ep, 1500, MAC, ("10.220.0.2/24",)).result(10) is None


def test_remove_neighbours_removes_only_entries_that_still_point_at_the_mac(nl, netns, bridge):
    nl.ensure_veth("snv-t", "snp-t", bridge, new_id(), 1500, MAC, ("10.220.0.2/24", "fd00:220::2/64"))
    nl.ensure_veth("snv-u", "snp-u", bridge, new_id(), 1500, OTHER, ("10.220.0.2/24",))  # took the address
    assert nl.remove_neighbours(bridge, MAC, ("10.220.0.2/24", "fd00:220::2/64")) == 1
    assert neighbours(netns, bridge) == {"10.220.0.2": (OTHER, ["PERMANENT"])}
    assert nl.remove_neighbours("br-none", MAC, ("10.220.0.2/24",)) == 0


def settled_without_carrier(netns, bridge: str, wait: float = 3.0) -> None:
    """The bridge's first port has no carrier: the bridge loses its own, and the kernel
    flushes its learned (non-permanent) neighbour entries when it handles that change
    (linkwatch, up to a second later). Wait for it, so that it cannot take the entry a
    test adds next."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        link = json.loads(netns.ip("-j", "link", "show", bridge).stdout)[0]
        if link["operstate"] == "DOWN":
            return
        time.sleep(0.05)
    raise AssertionError(f"{bridge} still has carrier after {wait} s: {link}")


def test_prune_neighbours_keeps_the_named_and_what_the_kernel_learned(nl, netns, bridge):
    nl.ensure_veth("snv-t", "snp-t", bridge, new_id(), 1500, MAC, ("10.220.0.2/24", "fd00:220::2/64"))
    settled_without_carrier(netns, bridge)
    subprocess.run(["ip", "-n", netns.name, "neigh", "add", "10.220.0.7", "lladdr", OTHER,
                    "dev", bridge, "nud", "stale"], check=True)
    assert nl.prune_neighbours(bridge, [(MAC, ("fd00:220::2/64",))]) == 1
    assert neighbours(netns, bridge) == {"fd00:220::2": (MAC, ["PERMANENT"]),
                                         "10.220.0.7": (OTHER, ["STALE"])}


class Backend(NullReconciler):
    def __init__(self, link_first: bool):
        self.first = link_first

    def link_first(self, net):
        return self.first


@pytest.mark.parametrize("link_first", [False, True], ids=["nftables", "ebpf"])
def test_driver_keeps_the_entries_from_create_to_delete_and_across_restore(netns, tmp_path, link_first):
    links = InNamespace(netns.name, Netlink)
    driver = Driver(State(str(tmp_path / "state")), links, FakeFirewall(), Backend(link_first))
    try:
        nid, eid = new_id(), new_id()
        driver.create_network(CreateNetworkRequest.from_wire(create_network_body(
            nid, pool="10.220.1.0/24", gateway="10.220.1.1/24", pool6="fd00:220:1::/64",
            gateway6="fd00:220:1::1/64")))
        bridge = driver.state.get_network(nid).bridge
        driver.create_endpoint(CreateEndpointRequest.from_wire(create_endpoint_body(
            nid, eid, address="10.220.1.2/24", address6="fd00:220:1::2/64")))
        mac = driver.state.get_endpoint(eid).mac
        want = {"10.220.1.2": (mac, ["PERMANENT"]), "fd00:220:1::2": (mac, ["PERMANENT"])}
        assert neighbours(netns, bridge) == want
        subprocess.run(["ip", "-n", netns.name, "neigh", "del", "10.220.1.2", "dev", bridge], check=True)
        subprocess.run(["ip", "-n", netns.name, "neigh", "add", "10.220.1.9", "lladdr", OTHER,
                        "dev", bridge, "nud", "permanent"], check=True)
        driver.restore()      # as after a daemon restart: the lost one back, the stray one gone
        assert neighbours(netns, bridge) == want
        driver.delete_endpoint(EndpointRequest.from_wire({"NetworkID": nid, "EndpointID": eid}))
        assert neighbours(netns, bridge) == {}
    finally:
        driver.state.close()
        links.shutdown()
