"""Forged ICMP errors (U17-F2), on every backend.

An ICMP/ICMPv6 error is part of the flow it quotes ("related") only when it
goes to that flow's end that sent the quoted packet: its outer destination is
the quoted packet's source (Linux nf_conntrack_inet_error(), "outer daddr
mismatch"; nftables then sees no state and drops it as invalid). Before the fix
the eBPF datapath passed any error whose quoted flow was tracked, wherever it
went: web, with one allowed flow to api, sent free payload to db (another
segment), to the outside and to the host with ``egress=deny``.

Lab: web (segment web), api (api), db (db), rule web->api:tcp/8080,
``egress=deny``; web keeps a real TCP connection to api:8080 open, and every
forged error quotes it, as sent (web -> api) or as its reply (api -> web).
"""
from __future__ import annotations

import socket
import struct
import time

import pytest

import frames as F
from nsfixtures import BRIDGE_MAC, HOST4, HOST6, OUTSIDE4, OUTSIDE6
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import ns_socket, open_stream, send_frame

pytestmark = pytest.mark.kernel
PORT = 8080


def _network(lab):
    web, api, db = lab.add(3)
    lab.apply(f"web->api:tcp/{PORT}", {web: "web", api: "api", db: "db"}, "allow", egress="deny")
    time.sleep(0.2)
    return web, api, db


def _error(fam: int, sender, outer_dst: str, quoted: tuple, token: bytes, dmac: str) -> bytes:
    """A destination-unreachable error from ``sender`` to ``outer_dst`` quoting the TCP
    packet ``quoted`` = (src, dst, sport, dport), ``token`` after the quoted 8 bytes."""
    src, dst, sport, dport = quoted
    l4 = struct.pack("!HHI", sport, dport, 12345)
    if fam == 4:
        msg = F.icmp4(3, 3, b"\0" * 4, F.ip4(src, dst, 6, l4, tot=40) + token)
        return F.eth(dmac, sender.mac, 0x0800, F.ip4(sender.ip4, outer_dst, 1, msg))
    msg = F.icmp6(sender.ip6, outer_dst, 1, 4, b"\0" * 4, F.ip6(src, dst, 6, l4) + token)
    return F.eth(dmac, sender.mac, 0x86dd, F.ip6(sender.ip6, outer_dst, 58, msg))


def _quotes(fam, web, api, sport):
    return {"sent": (web.ip(fam), api.ip(fam), sport, PORT), "reply": (api.ip(fam), web.ip(fam), PORT, sport)}


@pytest.mark.parametrize("fam", [4, 6])
def test_forged_errors_reach_no_one(lab, fam):
    """Errors quoting web's live flow, sent by web to db, the outside and the host: dropped."""
    web, api, db = _network(lab)
    stream = open_stream(web, api.ip(fam), PORT)
    raw = ns_socket(lab.host, socket.AF_INET if fam == 4 else socket.AF_INET6, socket.SOCK_RAW,
                    socket.IPPROTO_ICMP if fam == 4 else socket.IPPROTO_ICMPV6)
    raw.settimeout(0.05)
    try:
        quotes = _quotes(fam, web, api, stream.getsockname()[1])
        got = {}
        for who, victim, dst, dmac in (("db", db, db.ip(fam), db.mac),
                                       ("out", lab.outside, OUTSIDE4 if fam == 4 else OUTSIDE6, BRIDGE_MAC)):
            sends = [(web, _error(fam, web, dst, q, b"U17F2-%s-%s" % (who.encode(), k.encode()), dmac))
                     for k, q in quotes.items()]
            got.update(F.arrived(victim, sends, [b"U17F2-%s-%s" % (who.encode(), k.encode()) for k in quotes]))
        host = HOST4 if fam == 4 else HOST6
        for k, q in quotes.items():
            send_frame(web, _error(fam, web, host, q, b"U17F2-host-" + k.encode(), BRIDGE_MAC))
        got.update(F.received(raw, [b"U17F2-host-" + k.encode() for k in quotes]))
        assert stream.send(b"x") == 1    # the quoted flow is alive all along
    finally:
        raw.close()
        stream.close()
    assert not any(got.values()), {k: v for k, v in got.items() if v}


@pytest.mark.parametrize("fam", [4, 6])
def test_real_errors_of_the_flow_pass(lab, fam):
    """The control: an error to the end that sent the quoted packet passes (both directions)."""
    web, api, db = _network(lab)
    stream = open_stream(web, api.ip(fam), PORT)
    try:
        quotes = _quotes(fam, web, api, stream.getsockname()[1])
        to_web = F.arrived(web, [(api, _error(fam, api, web.ip(fam), quotes["sent"], b"U17F2-real-web", web.mac))],
                           [b"U17F2-real-web"])
        to_api = F.arrived(api, [(web, _error(fam, web, api.ip(fam), quotes["reply"], b"U17F2-real-api", api.mac))],
                           [b"U17F2-real-api"])
    finally:
        stream.close()
    assert all(to_web.values()) and all(to_api.values()), (to_web, to_api)
