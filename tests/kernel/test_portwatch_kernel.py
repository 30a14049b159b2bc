"""A member's veth taken off its network's bridge is put back (plugin.driver.portwatch),
against the real kernel in a throwaway namespace: the Driver's CreateNetwork and
CreateEndpoint make the bridge and veth, ``ip link`` takes the veth off (nomaster,
another bridge) or deletes the bridge, and the watch must put it back within a second
and ask the reconciler to check the network. The daemon's own joins cause no repair."""
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
from plugin.driver.portwatch import PortWatch
from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest
from plugin.driver.state import State
from plugin.kernel.links import Netlink

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from driver_fakes import FakeFirewall, create_endpoint_body, create_network_body  # noqa: E402


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


class Reconciler(NullReconciler):
    def __init__(self):
        self.repaired: list = []

    def repair_network(self, network_id: str) -> None:
        self.repaired.append(network_id)


def link(netns, dev: str) -> dict:
    out = subprocess.run(["ip", "-n", netns.name, "-j", "-d", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def ip(netns, *args: str) -> None:
    subprocess.run(["ip", "-n", netns.name, *args], check=True)


def wait_for(what, timeout: float = 2.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if what():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def member(netns, tmp_path):
    """(driver, reconciler, watch, bridge, veth) of one network with one endpoint."""
    links = InNamespace(netns.name, Netlink)
    reconciler = Reconciler()
    driver = Driver(State(str(tmp_path / "state")), links, FakeFirewall(), reconciler)
    watch = InNamespace(netns.name, lambda: PortWatch(driver))
    try:
        nid, eid = new_id(), new_id()
        driver.create_network(CreateNetworkRequest.from_wire(create_network_body(
            nid, pool="10.221.1.0/24", gateway="10.221.1.1/24")))
        watch.start()
        driver.create_endpoint(CreateEndpointRequest.from_wire(create_endpoint_body(
            nid, eid, address="10.221.1.2/24")))
        net, ep = driver.state.get_network(nid), driver.state.get_endpoint(eid)
        wait_for(lambda: watch.obj.checks >= 1)   # the join's own announcements were checked
        yield driver, reconciler, watch.obj, net.bridge, ep.veth_host
    finally:
        watch.obj.stop()
        watch.shutdown_plain()
        driver.state.close()
        links.shutdown()


def on_bridge(netns, veth: str, bridge: str) -> bool:
    return link(netns, veth).get("master") == bridge


def test_the_daemons_own_join_causes_no_repair(member, netns):
    driver, reconciler, watch, bridge, veth = member
    assert on_bridge(netns, veth, bridge)
    assert watch.put_back == 0 and reconciler.repaired == []


@pytest.mark.parametrize("how", ["nomaster", "other-bridge"])
def test_a_veth_taken_off_its_bridge_is_put_back_within_a_second(member, netns, how):
    driver, reconciler, watch, bridge, veth = member
    before = link(netns, veth)
    if how == "other-bridge":
        ip(netns, "link", "add", "br-other", "type", "bridge")
        ip(netns, "link", "set", veth, "master", "br-other")
    else:
        ip(netns, "link", "set", veth, "nomaster")
    assert not on_bridge(netns, veth, bridge)
    took = wait_for(lambda: on_bridge(netns, veth, bridge), 1.0)
    after = link(netns, veth)
    assert after["group"] == before["group"] != "default"
    assert "UP" in after["flags"] and after["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert watch.put_back == 1 and reconciler.repaired == [driver.state.networks()[0].id]
    assert took < 1.0


def test_a_deleted_bridge_is_made_again_with_its_port(member, netns):
    driver, reconciler, watch, bridge, veth = member
    group = link(netns, veth)["group"]
    ip(netns, "link", "del", bridge)
    wait_for(lambda: on_bridge(netns, veth, bridge), 1.0)
    assert "10.221.1.1" in [a["local"] for a in link_addresses(netns, bridge)]
    assert link(netns, veth)["group"] == group != "default"
    assert reconciler.repaired == [driver.state.networks()[0].id]


def link_addresses(netns, dev: str) -> list:
    out = subprocess.run(["ip", "-n", netns.name, "-j", "addr", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["addr_info"]
