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

U23-F3: the outer *source* as well. db, a third member that no rule connects with
web, sent web errors from its own address and MAC quoting web's flows with api: they
passed on both backends (a 212-byte payload across segments, ECONNREFUSED injected
into web's connected UDP socket, web's path MTU to api lowered). An error from a
member now passes only when that member is an end of the quoted flow; the gateway's
(the host's) and api's own errors of web's flows pass as before.
"""
from __future__ import annotations

import errno
import socket
import struct
import time

import pytest

import frames as F
from nsfixtures import BRIDGE_MAC, GATEWAY4, GATEWAY6, HOST4, HOST6, OUTSIDE4, OUTSIDE6
from nsfixtures import drain, lab  # noqa: F401 (fixture)
from packets import Sniffer, ns_socket, open_stream, send_frame

pytestmark = pytest.mark.kernel
PORT = 8080


def _network(lab):
    web, api, db = lab.add(3)
    lab.apply(f"web->api:tcp/{PORT}", {web: "web", api: "api", db: "db"}, "allow", egress="deny")
    time.sleep(0.2)
    return web, api, db


def _icmp(fam: int, outer_src: str, outer_dst: str, quoted: tuple, token: bytes, proto: int = 6) -> bytes:
    """The ICMP/ICMPv6 message of a port-unreachable error quoting the TCP (``proto`` 6)
    or UDP (17) packet ``quoted`` = (src, dst, sport, dport), ``token`` after its 8 bytes."""
    src, dst, sport, dport = quoted
    l4 = struct.pack("!HHI", sport, dport, 12345) if proto == 6 else struct.pack("!HHHH", sport, dport, 24, 0)
    if fam == 4:
        return F.icmp4(3, 3, b"\0" * 4, F.ip4(src, dst, proto, l4, tot=40) + token)
    return F.icmp6(outer_src, outer_dst, 1, 4, b"\0" * 4, F.ip6(src, dst, proto, l4) + token)


def _error(fam: int, sender, outer_dst: str, quoted: tuple, token: bytes, dmac: str, proto: int = 6) -> bytes:
    """That error as a frame from ``sender`` (its own MAC and address) to ``outer_dst``."""
    msg = _icmp(fam, sender.ip(fam), outer_dst, quoted, token, proto)
    if fam == 4:
        return F.eth(dmac, sender.mac, 0x0800, F.ip4(sender.ip4, outer_dst, 1, msg))
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


def _pending_error(sock) -> int:
    """The error a connected socket holds (SO_ERROR, which clears it): 0 when none."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


@pytest.mark.parametrize("fam", [4, 6])
def test_third_member_errors_reach_no_one(lab, fam):
    """U23-F3: db (no rule with web) sends web errors quoting web's TCP and UDP flows with
    api, from db's own address and MAC: none reaches web, web's connected UDP socket gets
    no error; db's error to the host quoting the host's flow to api does not reach the
    host; each is dropped and reported as ``invalid``. The controls: the gateway's (the host's) error and api's real port unreachable
    of the same UDP flow do reach web (ECONNREFUSED)."""
    uport = 7000
    web, api, db = lab.add(3)
    lab.apply(f"web->api:tcp/{PORT} web->api:udp/{uport}", {web: "web", api: "api", db: "db"}, "allow",
              egress="deny")
    time.sleep(0.2)
    af = socket.AF_INET if fam == 4 else socket.AF_INET6
    proto = socket.IPPROTO_ICMP if fam == 4 else socket.IPPROTO_ICMPV6
    gateway = GATEWAY4 if fam == 4 else GATEWAY6
    stream = open_stream(web, api.ip(fam), PORT)
    host_stream = open_stream(lab.host_box, api.ip(fam), PORT)   # from the gateway address
    sink = ns_socket(api.ns, af, socket.SOCK_DGRAM)
    sink.bind((api.ip(fam), uport))
    sink.settimeout(1.0)
    u = ns_socket(web.ns, af, socket.SOCK_DGRAM)
    host_raw = ns_socket(lab.host, af, socket.SOCK_RAW, proto)
    host_raw.settimeout(0.05)
    try:
        u.connect((api.ip(fam), uport))
        u.send(b"hello")
        assert sink.recv(100) == b"hello"                         # the UDP flow is open
        usport, sport = u.getsockname()[1], stream.getsockname()[1]
        udp_flow = (web.ip(fam), api.ip(fam), usport, uport)
        tcp_quotes = _quotes(fam, web, api, sport)
        events, before = lab.drop_events(), lab.dropped("invalid")
        forged = [(db, _error(fam, db, web.ip(fam), q, b"U23F3-db-tcp-" + k.encode(), web.mac))
                  for k, q in tcp_quotes.items()]
        forged.append((db, _error(fam, db, web.ip(fam), udp_flow, b"U23F3-db-udp", web.mac, proto=17)))
        to_web = F.arrived(web, forged, [b"U23F3-db-tcp-sent", b"U23F3-db-tcp-reply", b"U23F3-db-udp"])
        injected = _pending_error(u)
        hsport = host_stream.getsockname()[1]
        send_frame(db, _error(fam, db, gateway, (gateway, api.ip(fam), hsport, PORT), b"U23F3-db-host",
                              BRIDGE_MAC))
        to_host = F.received(host_raw, [b"U23F3-db-host"])
        # reported as the drops of forged packets are: "invalid", from db
        dropped = lab.dropped("invalid") - before
        reported = {(e.src, e.dst) for e in drain(events, 1.0) if e.reason == "invalid"}
        alive = stream.send(b"x") == 1 and host_stream.send(b"x") == 1
        # the controls: the gateway's error, then api's own (nothing listens any more)
        sn = Sniffer(web)
        try:
            host_raw.sendto(_icmp(fam, gateway, web.ip(fam), udp_flow, b"U23F3-gateway", proto=17),
                            (web.ip(fam), 0))
            gw_seen = any(b"U23F3-gateway" in f for f in sn.frames(0.5))
        finally:
            sn.close()
        gw_error = _pending_error(u)
        sink.close()
        time.sleep(1.1)                                           # (api's ICMP rate limit)
        u.send(b"again")
        time.sleep(0.3)
        real_error = _pending_error(u)
    finally:
        for s in (u, sink, host_raw, stream, host_stream):
            s.close()
    assert alive
    assert not any(to_web.values()) and not any(to_host.values()) and injected == 0, (to_web, to_host, injected)
    assert dropped >= 4 and {(db.ip(fam), web.ip(fam)), (db.ip(fam), gateway)} <= reported, (dropped, reported)
    assert gw_seen and gw_error == errno.ECONNREFUSED and real_error == errno.ECONNREFUSED, (gw_seen, gw_error, real_error)
