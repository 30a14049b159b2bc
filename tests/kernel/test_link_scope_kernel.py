"""IGMP and ICMPv6 ND/MLD pass unjudged on the link only (U17-F1, U17-F4), on every backend.

Before: both backends passed every IPv4 protocol-2 packet, and every ICMPv6
packet of an ND/MLD type, whatever its destination: a container sent free
payload (after the 8-byte IGMP or ICMPv6 header) unicast to another segment's
member, to the host and out of an ``egress=deny`` or ``--internal`` network.
Now IGMP passes unjudged only to an IPv4 multicast group (224.0.0.0/4), for
the host: a member's group copy to another member is dropped; ND/MLD types pass unjudged only to ff00::/8, fe80::/10 or an address
of the network's subnets. Anything else is judged like any other packet.
Address resolution between segments still works (the controls here, and
test_neighbours_kernel.py, test_link_local_kernel.py).

Lab: web (segment web), web2 (web), db (db), rule web->db:udp/7000.
"""
from __future__ import annotations

import socket
import struct
import time

import pytest

import frames as F
from nsfixtures import BRIDGE_MAC, GATEWAY4, HOST4, HOST6, OUTSIDE4, OUTSIDE6, UPLINK
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import ns_socket, send_frame

pytestmark = pytest.mark.kernel
ND_MLD = (133, 135, 136, 130, 131, 132, 143)
GROUP = "239.1.2.3"          # the group a report names
ALL_HOSTS, ALL_HOSTS_MAC = "224.0.0.1", "01:00:5e:00:00:01"   # where a group copy goes: every host joined it


def _network(lab, egress="allow", internal=False):
    web, web2, db = lab.add(3)
    opts = {"internal": True} if internal else {}
    lab.apply("web->db:udp/7000", {web: "web", web2: "web", db: "db"}, "allow", egress=egress, **opts)
    time.sleep(0.2)
    return web, web2, db


def _igmp(web, dst: str, dmac: str, token: bytes) -> bytes:
    return F.eth(dmac, web.mac, 0x0800, F.ip4(web.ip4, dst, 2, F.igmp(GROUP, token)))


def _host_socket(lab, family: int):
    proto = {4: 2, 6: socket.IPPROTO_ICMPV6}[family]
    s = ns_socket(lab.host, socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, proto)
    s.settimeout(0.05)
    return s


@pytest.mark.parametrize("setting", ["allow", "deny", "internal"])
def test_unicast_igmp_is_judged(lab, setting):
    """IGMP unicast: to another segment never; out only as egress/--internal say; to the host
    only with egress=allow (F1)."""
    web, web2, db = _network(lab, "allow" if setting == "allow" else "deny", setting == "internal")
    got = F.arrived(db, [(web, _igmp(web, db.ip4, db.mac, b"U17F1-db"))], [b"U17F1-db"])
    out = F.arrived(lab.outside, [(web, _igmp(web, OUTSIDE4, BRIDGE_MAC, b"U17F1-out"))], [b"U17F1-out"])
    raw = _host_socket(lab, 4)
    try:
        for name, dst in (("gw", GATEWAY4), ("uplink", HOST4)):
            send_frame(web, _igmp(web, dst, BRIDGE_MAC, b"U17F1-host-" + name.encode()))
        host = F.received(raw, [b"U17F1-host-gw", b"U17F1-host-uplink"])
    finally:
        raw.close()
    assert not any(got.values()), "unicast IGMP crossed segments"
    if setting == "allow":
        assert all(out.values()) and all(host.values()), (out, host)   # judged: egress=allow lets it out
    else:
        assert not any(out.values()) and not any(host.values()), (out, host)


def test_group_igmp_reaches_the_host_only(lab):
    """IGMP to a group reaches the host (multicast snooping, a querier), no other member:
    not another segment's, nor the sender's own segment's (a copy is dropped without a
    reason, as nftables' group_copy "igmp copy" rule does), and it is not counted as a drop."""
    web, web2, db = _network(lab)
    raw = _host_socket(lab, 4)
    try:
        frame = _igmp(web, ALL_HOSTS, ALL_HOSTS_MAC, b"U17F1-group")
        members = F.arrived(web2, [(web, frame)], [b"U17F1-group"])
        members.update({b"db": F.arrived(db, [(web, frame)], [b"U17F1-group"])[b"U17F1-group"]})
        host = F.received(raw, [b"U17F1-group"])
    finally:
        raw.close()
    assert all(host.values()), "the host did not get the IGMP report"
    assert not any(members.values()), f"IGMP group copies reached members: {members}"
    assert lab.dropped("no-rule") == 0


def _nd(web, type_: int, dst: str, dmac: str, token: bytes, hlim: int = 64) -> bytes:
    target = F.addr(web.ip6) if type_ == 136 else F.addr(dst)
    rest = b"\x20\0\0\0" if type_ == 136 else b"\0" * 4
    body = (b"" if type_ == 133 else target) + token
    return F.eth(dmac, web.mac, 0x86dd, F.ip6(web.ip6, dst, 58, F.icmp6(web.ip6, dst, type_, 0, rest, body), hlim))


@pytest.mark.parametrize("setting", ["deny", "internal"])
def test_routed_nd_mld_types_are_judged(lab, setting):
    """ND/MLD types to the outside or another host address: egress/--internal hold (F4)."""
    web, web2, db = _network(lab, "deny", setting == "internal")
    tokens = [b"U17F4-out-%d" % t for t in ND_MLD]
    out = F.arrived(lab.outside, [(web, _nd(web, t, OUTSIDE6, BRIDGE_MAC, b"U17F4-out-%d" % t)) for t in ND_MLD],
                    tokens)
    raw = _host_socket(lab, 6)
    try:
        for t in ND_MLD:
            send_frame(web, _nd(web, t, HOST6, BRIDGE_MAC, b"U17F4-host-%d" % t))
        host = F.received(raw, [b"U17F4-host-%d" % t for t in ND_MLD])
    finally:
        raw.close()
    assert not any(out.values()), {k: v for k, v in out.items() if v}
    assert not any(host.values()), {k: v for k, v in host.items() if v}


def test_nd_mld_types_routed_in_are_judged(lab):
    """ND/MLD types from the outside host, routed to a member's address: no rule lets the
    outside in, so nothing arrives (F4, the inbound direction)."""
    web, web2, db = _network(lab)
    out, up = lab.outside, lab.link_mac(UPLINK)
    got = F.arrived(web, [(out, _nd(out, t, web.ip6, up, b"U17F4-in-%d" % t)) for t in ND_MLD],
                    [b"U17F4-in-%d" % t for t in ND_MLD])
    assert not any(got.values()), {k: v for k, v in got.items() if v}


def test_nd_on_the_link_passes(lab):
    """The control: a unicast NS between segments (global and link-local addresses) and an
    NS to the solicited-node group still reach the other segment's member, egress=deny."""
    web, web2, db = _network(lab, "deny")
    snm = "ff02::1:ff" + db.ip6.split(":")[-1].zfill(6)[-6:-4] + ":" + db.ip6.split(":")[-1].zfill(4)[-4:]
    snm_mac = "33:33:ff:" + ":".join(F.addr(db.ip6)[13:].hex()[i:i + 2] for i in (0, 2, 4))
    sends = [(web, _nd(web, 135, db.ip6, db.mac, b"U17F4-ns-unicast", 255)),
             (web, F.eth(snm_mac, web.mac, 0x86dd, F.ip6(web.ip6, snm, 58, F.icmp6(
                 web.ip6, snm, 135, 0, b"\0" * 4, F.addr(db.ip6) + b"U17F4-ns-group"), 255)))]
    got = F.arrived(db, sends, [b"U17F4-ns-unicast", b"U17F4-ns-group"])
    assert all(got.values()), got
