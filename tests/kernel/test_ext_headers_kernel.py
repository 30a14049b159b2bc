"""IPv6 extension-header chains (U17-F5, U17-F7), on every backend.

The eBPF datapath walked at most four extension headers and then took the next
header value as the protocol: a TCP SYN behind five headers to an allowed port
was dropped as ``proto-60`` (F5), and a router advertisement or a neighbour
advertisement behind five headers was judged as protocol 60, not ICMPv6, so
that the anti-spoofing checks (no router adverts, adverts only for one's own
addresses) never ran and a same-segment peer took the sender as its router
(F7). Now the walk covers lib/parse.h's EXT_HEADERS_MAX headers, and a packet
with more is dropped as invalid (fail closed; nftables' ipv6_find_hdr walks any
number: an eBPF-only case, docs/deviations.md).
"""
from __future__ import annotations

import struct
import subprocess
import time

import pytest

import frames as F
from nsfixtures import drain, lab, only  # noqa: F401 (fixture)
from packets import link_local

pytestmark = pytest.mark.kernel
RULES = "web->api:tcp/8080 web->api:udp/7000"
WALKED = 16          # lib/parse.h EXT_HEADERS_MAX
PREFIX = "fd00:236:99::"


def _network(lab):
    web, api, db = lab.add(3)
    lab.apply(RULES, {web: "web", api: "api", db: "db"}, "allow")
    time.sleep(0.2)
    return web, api, db


def _syn(web, victim, port: int, headers: int, token: bytes) -> bytes:
    l4 = F.tcp(web.ip6, victim.ip6, 41000, port, 0x02, payload=token)
    return F.eth(victim.mac, web.mac, 0x86dd, F.chain6(web.ip6, victim.ip6, headers, 6, l4))


def _udp(web, victim, port: int, headers: int, token: bytes) -> bytes:
    l4 = F.udp(web.ip6, victim.ip6, 41001, port, token)
    return F.eth(victim.mac, web.mac, 0x86dd, F.chain6(web.ip6, victim.ip6, headers, 17, l4))


@pytest.mark.parametrize("headers", [0, 4, 5, 8, WALKED])
def test_allowed_ports_behind_headers(lab, headers):
    """TCP and UDP to api's allowed ports arrive behind any chain the walk covers (F5)."""
    web, api, db = _network(lab)
    tokens = [b"U17F5-tcp-%d" % headers, b"U17F5-udp-%d" % headers]
    got = F.arrived(api, [(web, _syn(web, api, 8080, headers, tokens[0])),
                          (web, _udp(web, api, 7000, headers, tokens[1]))], tokens)
    assert all(got.values()), got


@pytest.mark.parametrize("headers", [5, 8, WALKED])
def test_denied_ports_behind_headers(lab, headers):
    """The control: behind the same chains, what no rule allows stays dropped."""
    web, api, db = _network(lab)
    sends = {b"U17F5-db-%d" % headers: (db, _syn(web, db, 8080, headers, b"U17F5-db-%d" % headers)),
             b"U17F5-api9999-%d" % headers: (api, _syn(web, api, 9999, headers, b"U17F5-api9999-%d" % headers)),
             b"U17F5-api7001-%d" % headers: (api, _udp(web, api, 7001, headers, b"U17F5-api7001-%d" % headers))}
    got = {}
    for token, (victim, frame) in sends.items():
        got.update(F.arrived(victim, [(web, frame)], [token], wait=0.4))
    assert not any(got.values()), got


@only("ebpf")
def test_longer_chains_are_dropped(lab):
    """More headers than the walk covers: dropped as invalid, even to an allowed port."""
    web, api, db = _network(lab)
    drops = lab.drop_events()
    got = F.arrived(api, [(web, _syn(web, api, 8080, WALKED + 1, b"U17F5-long"))], [b"U17F5-long"])
    assert not any(got.values()), got
    reasons = {e.reason for e in drain(drops, 1.0) if e.family == 6 and e.src == web.ip6}
    assert reasons == {"invalid"}, reasons


def _same_segment(lab, rules: str):
    web, web2, db = lab.add(3)
    lab.apply(rules, {web: "web", web2: "web", db: "db"}, "allow")
    subprocess.run(["ip", "netns", "exec", web2.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=2",
                    "net.ipv6.conf.all.forwarding=0"], check=True)
    time.sleep(0.2)
    return web, web2, db


def _advert(web, headers: int, type_: int, rest: bytes, body: bytes) -> bytes:
    wl = link_local(web.mac)
    msg = F.icmp6(wl, "ff02::1", type_, 0, rest, body)
    return F.eth("33:33:00:00:00:01", web.mac, 0x86dd, F.chain6(wl, "ff02::1", headers, 58, msg, hlim=255))


@pytest.mark.parametrize("headers", [0, 5, WALKED])
def test_router_advert_behind_headers(lab, headers):
    """A container's RA never reaches its own segment's peers, behind headers or not (F7)."""
    web, web2, db = _same_segment(lab, RULES)
    pio = struct.pack("!BBBBIII", 3, 4, 64, 0xc0, 86400, 14400, 0) + F.addr(PREFIX)
    body = b"\0" * 8 + pio + b"\x01\x01" + F.mac(web.mac)
    frame = _advert(web, headers, 134, struct.pack("!BBH", 64, 0, 1800), body)
    got = F.arrived(web2, [(web, frame)] * 3, [F.addr(PREFIX)])
    routes = subprocess.run(["ip", "-n", web2.ns, "-6", "route"], capture_output=True, text=True, check=True).stdout
    assert not any(got.values()), "web2 received web's router advertisement"
    assert PREFIX not in routes and link_local(web.mac) not in routes, routes


@pytest.mark.parametrize("headers", [0, 5, WALKED])
def test_spoofed_neighbour_advert_behind_headers(lab, headers):
    """An override NA for db's address from web is dropped behind headers too (F7)."""
    web, web2, db = _same_segment(lab, "web->db:udp/7000")
    body = F.addr(db.ip6) + b"\x02\x01" + F.mac(web.mac)
    frame = _advert(web, headers, 136, struct.pack("!I", 0x20000000), body)
    token = F.addr(db.ip6) + b"\x02\x01" + F.mac(web.mac)
    got = F.arrived(web2, [(web, frame)] * 3, [token])
    assert not any(got.values()), "web2 received web's advert for db's address"
