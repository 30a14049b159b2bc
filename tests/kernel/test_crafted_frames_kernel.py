"""Crafted frames from a container must not open what policy keeps shut, on every
backend (tester user17's findings U17-F6 and U17-F3, proven here with real frames):

* a frame to a group MAC (broadcast, IPv6 all-nodes) whose IP destination is one
  address -- a member of another segment, the host, the outside -- leaves no flow
  behind that a following unicast packet of the same addresses and ports could use
  (nftables confirmed its conntrack entry through the host's copy, and then passed
  the flow on that state alone);
* a frame to one container's MAC with another container's IP address (a flow the
  policy allows) does not reach the container of the MAC.

Every test has a positive control in the same lab (the same kind of crafted frame
on an allowed flow arrives), so that a drop of every crafted frame cannot pass it.
"""
from __future__ import annotations

import ipaddress
import socket
import time

import pytest

import frames as F
from nsfixtures import BRIDGE_MAC, GATEWAY4, GATEWAY6, OUTSIDE4, OUTSIDE6, lab  # noqa: F401
from packets import Sniffer, ns_socket, send_frame

pytestmark = pytest.mark.kernel

GROUP_MAC = {4: "ff:ff:ff:ff:ff:ff", 6: "33:33:00:00:00:01"}
PORT = 7710
ALLOWED = 7000
SETTLE = 0.2   # s: the primer's conntrack entry confirmed before the unicast follows


def udp_frame(src, dst_mac: str, src_ip: str, dst_ip: str, port: int, payload: bytes,
              sport: int = 4710) -> bytes:
    """Ethernet/IPv4 or IPv6/UDP from container ``src``'s MAC, checksums filled in."""
    udp = F.udp(src_ip, dst_ip, sport, port, payload)
    if ":" in dst_ip:
        return F.eth(dst_mac, src.mac, 0x86DD, F.ip6(src_ip, dst_ip, 17, udp))
    return F.eth(dst_mac, src.mac, 0x0800, F.ip4(src_ip, dst_ip, 17, udp))


def receiver(ns: str, addr: str, port: int) -> socket.socket:
    s = ns_socket(ns, socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(0.05)
    return s


def primed(web, dst_ip: str, unicast_mac: str, fam: int) -> None:
    """The primer (one datagram to the group MAC), then the same flow to ``unicast_mac``."""
    send_frame(web, udp_frame(web, GROUP_MAC[fam], web.ip(fam), dst_ip, PORT, b"primer"))
    time.sleep(SETTLE)
    send_frame(web, udp_frame(web, unicast_mac, web.ip(fam), dst_ip, PORT, b"after the primer"))


def control(web, api, fam: int) -> None:
    """The same crafted unicast frame on the allowed flow web -> api:udp/7000 arrives."""
    with receiver(api.ns, api.ip(fam), ALLOWED) as rx:
        send_frame(web, udp_frame(web, api.mac, web.ip(fam), api.ip(fam), ALLOWED, b"control"))
        assert F.payloads(rx, 0.6) == [b"control"], "the crafted frame of an allowed flow did not arrive"


@pytest.mark.parametrize("fam", [4, 6])
def test_a_group_frame_opens_no_flow_to_another_segment(lab, fam):
    web, api, db = lab.add(3)
    lab.apply("web->api:udp/7000", {web: "web", api: "api", db: "db"}, egress="deny")
    with receiver(db.ns, db.ip(fam), PORT) as rx:
        primed(web, db.ip(fam), db.mac, fam)
        assert F.payloads(rx, 0.6) == [], "a broadcast primer opened web -> db (no rule)"
    control(web, api, fam)


@pytest.mark.parametrize("fam", [4, 6])
def test_a_group_frame_opens_no_flow_to_the_host_or_out(lab, fam):
    web, api = lab.add(2)
    lab.apply("web->api:udp/7000", {web: "web", api: "api"}, egress="deny")
    gateway, outside = (GATEWAY4, OUTSIDE4) if fam == 4 else (GATEWAY6, OUTSIDE6)
    with receiver(lab.host, gateway, PORT) as rx:
        primed(web, gateway, BRIDGE_MAC, fam)
        assert F.payloads(rx, 0.6) == [], "a broadcast primer opened web -> the host (egress=deny)"
    sniffer = Sniffer(lab.outside)
    try:
        primed(web, outside, BRIDGE_MAC, fam)
        leaked = [f for f in sniffer.frames(0.6) if b"primer" in f]
    finally:
        sniffer.close()
    assert leaked == [], "a broadcast primer opened web -> the outside (egress=deny)"
    control(web, api, fam)


@pytest.mark.parametrize("fam", [4, 6])
def test_a_frame_reaches_only_the_container_of_its_ip_address(lab, fam):
    web, api, db = lab.add(3)
    lab.apply("web->api:udp/7000", {web: "web", api: "api", db: "db"})
    sniffer = Sniffer(db)
    try:
        send_frame(web, udp_frame(web, db.mac, web.ip(fam), api.ip(fam), ALLOWED, b"api's, to db's MAC"))
        seen = [f for f in sniffer.frames(0.6) if b"api's, to db's MAC" in f]
    finally:
        sniffer.close()
    assert seen == [], "db received a frame of the flow web -> api (its MAC, api's address)"
    assert lab.dropped("not-member") > 0
    control(web, api, fam)


def test_a_group_flow_the_host_refused_stays_refused(lab):
    """A subnet broadcast is a group address: its frame passes the bridge, and the host
    refuses it (egress=deny) after the bridge confirmed its conntrack entry. A unicast
    frame of the same flow to the host's MAC is then judged again, not passed on that
    entry (only flows secnet judged and let through pass on their state)."""
    web, api = lab.add(2)
    lab.apply("web->api:udp/7000", {web: "web", api: "api"}, egress="deny")
    bcast = str(ipaddress.ip_network(f"{GATEWAY4}/24", strict=False).broadcast_address)
    rx = ns_socket(lab.host, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        rx.bind(("0.0.0.0", PORT))
        rx.settimeout(0.05)
        primed(web, bcast, BRIDGE_MAC, 4)
        assert F.payloads(rx, 0.6) == [], "the host received web's datagrams to the subnet broadcast"
    finally:
        rx.close()
    control(web, api, 4)
