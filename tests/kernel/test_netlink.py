"""plugin.kernel.links against the real kernel, inside a throwaway namespace."""
from __future__ import annotations

import asyncio
import gc
import subprocess
import threading
import uuid

import pytest

from nsfixtures import InNamespace
from pyroute2.netlink.exceptions import NetlinkError
from plugin.kernel.links import ALIAS_PREFIX, BridgeFull, LinkConflict, Netlink, derived_mac, port_group

GW4, GW6 = "10.220.0.1/24", "fd00:220::1/64"
MAC = "02:42:0a:dc:00:02"


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture
def owner():
    return new_id()


@pytest.fixture
def bridge(nl, netns, owner):
    nl.ensure_bridge("br-t", owner, 1500, [GW4])
    return "br-t"


def kind(link):
    return (link.get("linkinfo") or {}).get("info_kind")


def test_ensure_bridge_creates_it_up_with_mtu_mac_alias_and_addresses(nl, netns, owner):
    nl.ensure_bridge("br-t", owner, 1400, [GW4, GW6])
    link = netns.link("br-t")
    assert kind(link) == "bridge"
    assert "UP" in link["flags"]
    assert link["mtu"] == 1400
    assert link["ifalias"] == ALIAS_PREFIX + owner
    assert link["address"] == derived_mac(owner) and derived_mac(owner) == derived_mac(owner)
    addrs = netns.addrs("br-t")
    assert set(addrs) == {GW4, GW6}
    # the IPv6 gateway answers at once: no duplicate address detection pending
    assert addrs[GW6].get("nodad") and not addrs[GW6].get("tentative")
    assert nl.link_exists("br-t") and not nl.link_exists("br-none")


def test_ensure_bridge_makes_a_new_bridge_with_the_backends_options_and_says_so(nl, netns, owner):
    options = (("br_nf_call_iptables", 1), ("br_nf_call_ip6tables", 1))   # the nftables backend's
    assert nl.ensure_bridge("br-t", owner, 1500, [GW4], options=options) is True
    data = netns.link("br-t")["linkinfo"]["info_data"]
    assert (data["nf_call_iptables"], data["nf_call_ip6tables"], data["nf_call_arptables"]) == (1, 1, 0)
    assert nl.ensure_bridge("br-t", owner, 1500, [GW4], options=options) is False   # there: not made
    assert nl.ensure_bridge("br-u", owner, 1500, [GW4]) is True
    assert netns.link("br-u")["linkinfo"]["info_data"]["nf_call_iptables"] == 0      # none asked


def test_ensure_bridge_is_idempotent(nl, netns, owner):
    for _ in range(3):
        nl.ensure_bridge("br-t", owner, 1500, [GW4, GW6])
    assert [l["ifname"] for l in netns.links() if kind(l) == "bridge"] == ["br-t"]
    assert set(netns.addrs("br-t")) == {GW4, GW6}


def test_ensure_bridge_repairs_drift(nl, netns, owner):
    nl.ensure_bridge("br-t", owner, 1400, [GW4, GW6])
    netns.ip("addr", "del", GW4, "dev", "br-t")
    netns.ip("addr", "del", GW6, "dev", "br-t")
    netns.ip("link", "set", "br-t", "down")
    netns.ip("link", "set", "br-t", "mtu", "9000")
    netns.ip("link", "set", "br-t", "address", "02:11:22:33:44:55")
    assert netns.addrs("br-t") == {}
    nl.ensure_bridge("br-t", owner, 1400, [GW4, GW6])
    link = netns.link("br-t")
    assert "UP" in link["flags"] and link["mtu"] == 1400 and link["address"] == derived_mac(owner)
    assert set(netns.addrs("br-t")) == {GW4, GW6}


def test_ensure_bridge_restores_ipv6_lost_on_link_down(nl, netns, owner):
    nl.ensure_bridge("br-t", owner, 1500, [GW4, GW6])
    netns.ip("link", "set", "br-t", "down")  # the kernel flushes IPv6 addresses on down
    nl.ensure_bridge("br-t", owner, 1500, [GW4, GW6])
    assert set(netns.addrs("br-t")) == {GW4, GW6}


def test_ensure_bridge_adopts_one_a_crash_left_without_its_owner(nl, netns, owner):
    # made by a daemon that died before it named the owner: no alias, down, default MTU
    name = "sn-" + owner[:12]
    netns.ip("link", "add", name, "type", "bridge")
    nl.ensure_bridge(name, owner, 1400, [GW4])
    link = netns.link(name)
    assert link["ifalias"] == ALIAS_PREFIX + owner and "UP" in link["flags"]
    assert link["mtu"] == 1400 and link["address"] == derived_mac(owner)
    assert set(netns.addrs(name)) == {GW4}


def test_ensure_bridge_adds_a_new_gateway(nl, netns, owner):
    nl.ensure_bridge("br-t", owner, 1500, [GW4])
    nl.ensure_bridge("br-t", owner, 1500, [GW4, GW6])
    assert set(netns.addrs("br-t")) == {GW4, GW6}


@pytest.mark.parametrize("make", [
    ["type", "bridge"],                                   # someone else's bridge, no alias
    ["type", "ifb"],                                    # another kind of link
])
def test_ensure_bridge_refuses_a_foreign_link(nl, netns, owner, make):
    netns.ip("link", "add", "br-t", *make)
    netns.ip("link", "set", "br-t", "mtu", "1450")
    with pytest.raises(LinkConflict, match="br-t"):   # its add is exclusive: nothing of it changes
        nl.ensure_bridge("br-t", owner, 1400, [GW4], options=(("br_nf_call_iptables", 1),))
    link = netns.link("br-t")
    assert link["mtu"] == 1450 and not link.get("ifalias") and netns.addrs("br-t") == {}
    assert link["linkinfo"].get("info_data", {}).get("nf_call_iptables", 0) == 0


def test_ensure_bridge_refuses_another_owners_bridge_and_a_non_bridge_with_our_alias(nl, netns, owner):
    nl.ensure_bridge("br-t", owner, 1500, [GW4])
    with pytest.raises(LinkConflict):
        nl.ensure_bridge("br-t", new_id(), 1500, [GW4])
    netns.ip("link", "add", "dm-t", "type", "ifb")
    netns.ip("link", "set", "dm-t", "alias", ALIAS_PREFIX + owner)
    with pytest.raises(LinkConflict):
        nl.ensure_bridge("dm-t", owner, 1500, [GW4])
    assert kind(netns.link("dm-t")) == "ifb"


def test_ensure_veth_enslaves_with_mtu_and_mac(nl, netns, owner):
    nl.ensure_bridge("br-t", owner, 1400, [GW4])
    ep = new_id()
    nl.ensure_veth("snv-t", "snp-t", "br-t", ep, 1400, MAC)
    host, peer = netns.link("snv-t"), netns.link("snp-t")
    assert kind(host) == "veth" and kind(peer) == "veth"
    assert host["master"] == "br-t" and "UP" in host["flags"] and host["mtu"] == 1400
    assert host["ifalias"] == ALIAS_PREFIX + ep
    assert peer["address"] == MAC and peer["mtu"] == 1400
    assert "master" not in peer and "UP" not in peer["flags"]
    assert host.get("link") == "snp-t" or host.get("link_index") == peer["ifindex"]
    assert host["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert _sysctl(netns, "net/ipv6/conf/snv-t/disable_ipv6") == "1"


def test_ensure_veth_makes_both_sides_with_one_queue_each_way(nl, netns, owner):
    """One TX and one RX queue from the start: the kernel then has no queues to cut after
    the pair is registered (a synchronize_net() under RTNL per side; links._add_veth).
    (On a one-CPU machine a default pair has one queue too and this cannot tell.)"""
    nl.ensure_bridge("br-t", owner, 1500, [GW4])
    nl.ensure_veth("snv-t", "snp-t", "br-t", new_id(), 1500, MAC)
    for name in ("snv-t", "snp-t"):
        link = netns.link(name)
        assert (link["num_tx_queues"], link["num_rx_queues"]) == (1, 1), name


def test_ensure_veth_puts_the_host_side_in_its_bridges_port_group_and_repairs_it(nl, netns, owner):
    """The nftables datapath's bridge chains let devices outside the group go on one compare
    (plugin.enforce.nftables.portlinks): a port must be in it from its first frame."""
    nl.ensure_bridge("br-t", owner, 1500, [GW4])
    ep = new_id()
    nl.ensure_veth("snv-t", "snp-t", "br-t", ep, 1500, MAC)
    assert str(netns.link("snv-t")["group"]) == str(port_group("br-t"))
    netns.ip("link", "set", "snv-t", "group", "0")
    nl.ensure_veth("snv-t", "snp-t", "br-t", ep, 1500, MAC)   # a restart's repair
    assert str(netns.link("snv-t")["group"]) == str(port_group("br-t"))


def _sysctl(netns, path: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns.name, "cat", f"/proc/sys/{path}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_ensure_veth_finds_a_bridge_made_again_under_its_name(nl, netns, owner, bridge):
    nl.ensure_veth("snv-t", "snp-t", bridge, new_id(), 1500, MAC)   # the bridge's index remembered
    before = netns.link(bridge)["ifindex"]
    netns.ip("link", "del", bridge)                                 # behind the daemon's back
    netns.ip("link", "add", bridge, "type", "bridge")
    assert netns.link(bridge)["ifindex"] != before
    nl.ensure_veth("snv-u", "snp-u", bridge, new_id(), 1500, MAC)
    assert netns.link("snv-u")["master"] == bridge
    netns.ip("link", "del", bridge)
    netns.ip("link", "add", bridge, "type", "bridge")
    nl.ensure_veth("snv-u", "snp-u", bridge, netns.link("snv-u")["ifalias"][len(ALIAS_PREFIX):], 1500, MAC)
    assert netns.link("snv-u")["master"] == bridge                  # repaired onto the new one
    nl.remove_link(bridge, owner="")                                # ours to remove: no alias
    with pytest.raises(LinkConflict, match="is missing"):
        nl.ensure_veth("snv-w", "snp-w", bridge, new_id(), 1500, MAC)
    assert netns.link("snv-w") is None


def test_ensure_veth_whose_peer_name_is_taken_fails_with_nothing_made(nl, netns, bridge):
    netns.ip("link", "add", "snp-t", "type", "ifb")
    with pytest.raises(NetlinkError):
        nl.ensure_veth("snv-t", "snp-t", bridge, new_id(), 1500, MAC)
    assert netns.link("snv-t") is None and kind(netns.link("snp-t")) == "ifb"


def test_a_full_bridge_is_named_and_leaves_nothing(nl, netns, bridge):
    """1,023 ports (ifb devices: one each, cheaper than veth pairs) fill a bridge; the next pair fails."""
    ports = "".join(f"link add snd{i} type ifb\nlink set snd{i} master {bridge}\n" for i in range(1023))
    subprocess.run(["ip", "-n", netns.name, "-batch", "-"], input=ports, text=True, check=True)
    with pytest.raises(BridgeFull, match="bridge br-t is full: .* at most 1,023 endpoints"):
        nl.ensure_veth("snv-f", "snp-f", bridge, new_id(), 1500, MAC)
    assert netns.link("snv-f") is None and netns.link("snp-f") is None


def test_start_veth_makes_the_pair_on_the_netlink_thread_while_the_caller_goes_on(nl, netns, bridge):
    ep = new_id()
    future = nl.start_veth("snv-t", "snp-t", bridge, ep, 1500, MAC)
    assert future.result(10) is None
    host, peer = netns.link("snv-t"), netns.link("snp-t")
    assert host["master"] == bridge and "UP" in host["flags"] and host["ifalias"] == ALIAS_PREFIX + ep
    assert peer["address"] == MAC and "UP" not in peer["flags"]


def test_start_veth_hands_its_failure_to_the_future(nl, netns, bridge):
    with pytest.raises(LinkConflict, match="br-none is missing"):
        nl.start_veth("snv-t", "snp-t", "br-none", new_id(), 1500, MAC).result(10)
    nl.ensure_veth("snv-u", "snp-u", bridge, new_id(), 1500, MAC)
    with pytest.raises(LinkConflict, match="not this network's"):
        nl.start_veth("snv-u", "snp-u", bridge, new_id(), 1500, MAC).result(10)


def test_ensure_veth_is_idempotent_and_repairs(nl, netns, bridge):
    ep = new_id()
    for _ in range(2):
        nl.ensure_veth("snv-t", "snp-t", bridge, ep, 1500, MAC)
    assert sorted(l["ifname"] for l in netns.links() if kind(l) == "veth") == ["snp-t", "snv-t"]
    netns.ip("link", "set", "snv-t", "nomaster")
    netns.ip("link", "set", "snv-t", "down")
    netns.ip("link", "set", "snv-t", "mtu", "1300")
    nl.ensure_veth("snv-t", "snp-t", bridge, ep, 1500, MAC)
    host = netns.link("snv-t")
    assert host["master"] == bridge and "UP" in host["flags"] and host["mtu"] == 1500
    assert netns.link("snp-t")["address"] == MAC


def test_ensure_veth_after_docker_moved_the_peer(nl, netns, other_netns, bridge):
    ep = new_id()
    nl.ensure_veth("snv-t", "snp-t", bridge, ep, 1500, MAC)
    netns.ip("link", "set", "snp-t", "netns", other_netns.name)
    netns.ip("link", "set", "snv-t", "nomaster")
    nl.ensure_veth("snv-t", "snp-t", bridge, ep, 1500, MAC)
    assert netns.link("snv-t")["master"] == bridge
    assert netns.link("snp-t") is None, "a second peer was made in the host namespace"
    assert other_netns.link("snp-t")["address"] == MAC


def test_ensure_veth_needs_the_bridge(nl, netns):
    with pytest.raises(LinkConflict, match="br-none"):
        nl.ensure_veth("snv-t", "snp-t", "br-none", new_id(), 1500, MAC)
    assert netns.link("snv-t") is None and netns.link("snp-t") is None


def test_ensure_veth_refuses_a_foreign_link(nl, netns, bridge):
    netns.ip("link", "add", "snv-t", "type", "ifb")
    with pytest.raises(LinkConflict, match="snv-t"):
        nl.ensure_veth("snv-t", "snp-t", bridge, new_id(), 1500, MAC)
    assert kind(netns.link("snv-t")) == "ifb" and netns.link("snp-t") is None
    nl.ensure_veth("snv-u", "snp-u", bridge, ep := new_id(), 1500, MAC)
    with pytest.raises(LinkConflict):
        nl.ensure_veth("snv-u", "snp-u", bridge, new_id(), 1500, MAC)
    assert netns.link("snv-u")["ifalias"] == ALIAS_PREFIX + ep


def test_remove_link(nl, netns, owner, bridge):
    assert nl.remove_link("absent0") is False
    assert nl.remove_link("absent0", owner=owner) is False
    ep = new_id()
    nl.ensure_veth("snv-t", "snp-t", bridge, ep, 1500, MAC)
    assert nl.remove_link("snv-t", owner=new_id()) is False
    assert netns.link("snv-t") is not None
    assert nl.remove_link("snv-t", owner=ep) is True
    assert netns.link("snv-t") is None and netns.link("snp-t") is None
    assert nl.remove_link(bridge, owner=owner) is True and netns.link(bridge) is None
    assert nl.remove_link(bridge, owner=owner) is False
    netns.ip("link", "add", "dm-t", "type", "ifb")
    assert nl.remove_link("dm-t") is True and netns.link("dm-t") is None


def test_owned_links_lists_only_aliased_links(nl, netns, owner, bridge):
    ep = new_id()
    nl.ensure_veth("snv-t", "snp-t", bridge, ep, 1500, MAC)
    netns.ip("link", "add", "br-foreign", "type", "bridge")
    netns.ip("link", "add", "dm-other", "type", "ifb")
    netns.ip("link", "set", "dm-other", "alias", "other:thing")
    assert sorted(nl.owned_links()) == sorted([(bridge, "bridge", owner), ("snv-t", "veth", ep)])


def test_ipv6_forwarding_is_switched_on_once_in_this_namespace(nl, netns):
    def forwarding(scope="all"):
        return subprocess.run(["ip", "netns", "exec", netns.name, "sysctl", "-n",
                               f"net.ipv6.conf.{scope}.forwarding"], capture_output=True, text=True).stdout.strip()
    assert forwarding() == "0"
    assert nl.ensure_ipv6_forwarding() is True
    assert nl.ensure_ipv6_forwarding() is False
    assert forwarding("all") == forwarding("default") == "1"


def _event_loops() -> int:
    gc.collect()
    return sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())


def test_calls_from_many_threads_share_one_socket_and_event_loop(nl, netns, owner):
    """pyroute2 gives every calling thread a socket and event loop of its own;
    Netlink makes every call on its one thread (in its namespace), so twenty
    threads that come and go leave nothing behind and see the namespace's links."""
    nl.ensure_bridge("br-t", owner, 1500, [GW4])
    loops = _event_loops()
    seen = []

    def worker():
        seen.append(nl.obj.link_exists("br-t"))
        nl.obj.ensure_bridge("br-t", owner, 1500, [GW4])

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [True] * 20
    assert _event_loops() == loops
    assert [t.name for t in threading.enumerate()].count("secnet-netlink_0") >= 1


def test_a_closed_netlink_says_so(netns):
    obj = InNamespace(netns.name, Netlink)
    obj.shutdown()
    with pytest.raises(OSError, match="closed"):
        obj.obj.link_exists("lo")


def test_messages_no_request_claimed_are_not_kept(nl, netns, owner):
    """The kernel's ACK after each answer lands in pyroute2's
    root queue, which nothing reads: Netlink drops them after every call, so 300
    calls leave the queue empty (it kept one message per call)."""
    nl.ensure_bridge("br-t", owner, 1500, [GW4])
    for _ in range(300):
        assert nl.link_exists("br-t")
    netlink = nl.obj
    waiting = netlink._pool.submit(lambda: netlink._ipr.asyncore.local.msg_queue.root.qsize()).result()
    assert waiting == 0
