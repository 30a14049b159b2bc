"""East-west in a real kernel, driven through the Backend interface, judged only
by what real packets do: the truth table, state, fail closed, anti-spoofing
(IP, MAC, ARP, neighbour discovery).

Every test runs once per backend of ``nsfixtures.BACKENDS`` (ids
``[nftables]``, ``[ebpf]``); expected verdicts come from
``segmentation.reference`` (the contract restated naively), never from the
backend's own data. North-south is in test_datapath_northsouth.py.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from nsfixtures import drain, lab  # noqa: F401 (fixture)
from packets import (FEW, Sniffer, arp_frame, assert_all, icmp6_frame, judge, link_local, mac_bytes,
                     na_frame, ns_frame, ns_socket, outcomes, parallel, probe_addr, probe_icmp, probe_tcp,
                     probe_udp, send_frame, sh, udp4_frame)
from plugin.kernel.icmp import checksum
from segmentation.reference import reference_allowed

pytestmark = pytest.mark.kernel

SEGMENTS = ("web", "api", "db", "dns", "monitor")
RULES = "web->api:tcp/8080, api->db:tcp/5432, *->dns:udp/53, monitor->*, web->db:icmp"
# tcp on both named ports and on one no rule names, udp/53, icmp echo
SERVICES = (("tcp", 8080), ("tcp", 5432), ("tcp", 9999), ("udp", 53), ("icmp", None))
ALL = [(proto, port, fam) for proto, port in SERVICES for fam in (4, 6)]


# --- 1. the east-west truth table ----------------------------------------------------

def test_lab_passes_everything_before_a_network_is_applied(lab):
    """The oracle's control: with no tables or programs yet, every probe gets through."""
    cs = lab.add(3)
    assert_all(outcomes([(s, d) for s in cs for d in cs if s is not d], ALL), "ok")


@pytest.mark.parametrize("intra, mode", [("allow", "enforce"), ("deny", "enforce"), ("deny", "audit")])
def test_truth_table(lab, intra, mode):
    """Every ordered pair of containers x SERVICES x {v4, v6}: packets agree with the
    contract (in audit mode, every cell passes)."""
    cs = lab.add(2 * len(SEGMENTS))            # two members per segment: intra pairs too
    segment = {c: SEGMENTS[c.index % len(SEGMENTS)] for c in cs}
    lab.apply(RULES, segment, intra, mode=mode)
    got = outcomes([(s, d) for s in cs for d in cs if s is not d], ALL)

    def expect(cell):
        s, d, proto, port, _fam = cell
        ok = reference_allowed(lab.options, SEGMENTS, ("segment", segment[s]), ("segment", segment[d]),
                               proto, port)
        return "ok" if ok or mode == "audit" else "timeout"
    wrong = judge(got, expect)
    assert len(got) == 90 * len(ALL)
    assert {"ok", "timeout"} <= set(got.values()) or mode == "audit"
    assert not wrong, f"{len(wrong)} of {len(got)} cells differ:\n" + "\n".join(wrong)


def test_explicit_rule_survives_intra_deny_and_star(lab):
    a, b, c = lab.add(3)
    lab.apply("web->web:tcp/8080, *->db:udp/53", {a: "web", b: "web", c: "db"}, "deny")
    cells = [(a, b.ip4, "tcp", 8080), (a, b.ip6, "tcp", 5432), (a, c.ip4, "udp", 53),
             (b, c.ip6, "udp", 53), (c, a.ip4, "udp", 53)]
    assert parallel(probe_addr, cells) == ["ok", "timeout", "ok", "ok", "timeout"]


def test_any_allows_every_protocol(lab):
    a, b = lab.add(2)
    lab.apply("web->api:any", {a: "web", b: "api"}, "deny")
    assert_all(outcomes([(a, b)], ALL), "ok")
    assert_all(outcomes([(b, a)], FEW), "timeout")


# --- 2. state -----------------------------------------------------------------------------

def test_replies_pass_reverse_new_flows_do_not(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080, web->api:udp/5000", {web: "web", api: "api"}, "deny")
    expected = {
        (web, api, "tcp", 8080): "ok",         # SYN-ACK and data come back
        (api, web, "tcp", 8080): "timeout",    # the reverse is a new flow
        (web, api, "udp", 53): "timeout",
        (api, web, "icmp", None): "timeout",
        (web, api, "udp", 5000): "refused",    # nobody listens: the ICMP error of an allowed flow passes
        (api, web, "udp", 5000): "timeout",    # a denied one is dropped silently, no error comes back
    }
    cells = [(src, dst.ip(fam), proto, port) for src, dst, proto, port in expected for fam in (4, 6)]
    got = parallel(probe_addr, cells)
    want = [expected[(src, dst, proto, port)] for src, dst, proto, port in expected for _ in (4, 6)]
    assert got == want


def _icmp4_error(kind: int, src, dst, sport: int, dport: int) -> bytes:
    """An ICMP error of type ``kind`` quoting a UDP datagram ``src``:``sport`` ->
    ``dst``:``dport`` (the inner IPv4 header and the first 8 bytes of UDP, RFC 792)."""
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + 8, 1, 0, 64, 17, 0,
                        socket.inet_aton(src.ip4), socket.inet_aton(dst.ip4))
    inner = inner[:10] + struct.pack("!H", checksum(inner)) + inner[12:]
    inner += struct.pack("!HHHH", sport, dport, 16, 0)
    rest = socket.inet_aton(dst.ip4) if kind == 5 else b"\0" * 4   # redirect: a gateway
    head = struct.pack("!BBH", kind, 1 if kind in (3, 5) else 0, 0) + rest
    return head[:2] + struct.pack("!H", checksum(head + inner)) + head[4:] + inner


def _icmp6_error(kind: int, src, dst, sport: int, dport: int) -> bytes:
    """An ICMPv6 error of type ``kind`` quoting a UDP datagram ``src``:``sport`` ->
    ``dst``:``dport``; the kernel fills in the checksum of a raw ICMPv6 socket (RFC 3542)."""
    inner = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + ipaddress.IPv6Address(src.ip6).packed
    inner += ipaddress.IPv6Address(dst.ip6).packed + struct.pack("!HHHH", sport, dport, 8, 0)
    return struct.pack("!BBHI", kind, 0, 0, 0) + inner


#: family -> (socket family, raw protocol, error builder, ethertype, IP header length, L4 protocol at)
ICMP_ERRORS = {4: (socket.AF_INET, socket.IPPROTO_ICMP, _icmp4_error, b"\x08\x00", 20, 23),
               6: (socket.AF_INET6, socket.IPPROTO_ICMPV6, _icmp6_error, b"\x86\xdd", 40, 20)}


def _quoted_ports(frames, family: int, kind: int) -> set:
    """Source ports of the flows quoted by ICMP errors of type ``kind`` among ``frames``."""
    _af, proto, _build, ethertype, iphl, proto_at = ICMP_ERRORS[family]
    at, out = 14 + iphl, set()
    for f in frames:
        if f[12:14] == ethertype and f[proto_at] == proto and f[at] == kind:
            out.add(struct.unpack("!H", f[at + 8 + iphl:at + 8 + iphl + 2])[0])
    return out


@pytest.mark.parametrize("family, kind", [(4, k) for k in (3, 4, 5, 11, 12)] + [(6, k) for k in (1, 2, 3, 4, 100)])
def test_every_icmp_error_kind_of_an_allowed_flow_passes(lab, family, kind):
    """Conntrack's "related" covers the IPv4 errors destination unreachable, source quench,
    redirect, time exceeded and parameter problem (Linux nf_conntrack_proto_icmp.c
    icmp_is_err) and every ICMPv6 type below 128 (RFC 4443 2.1; 100 is a private
    experimentation error type): each passes when it quotes a tracked flow and is
    dropped when it quotes none, on both backends alike."""
    af, proto, build, _eth, _hl, _at = ICMP_ERRORS[family]
    web, api = lab.add(2)
    lab.apply("web->api:udp/5000", {web: "web", api: "api"}, "deny")
    with ns_socket(web.ns, af, socket.SOCK_DGRAM) as s:
        s.bind((web.ip(family), 4444))
        s.sendto(b"x", (api.ip(family), 5000))
    sniff = Sniffer(web)
    try:
        with ns_socket(api.ns, af, socket.SOCK_RAW, proto) as raw:
            for sport in (4444, 4445):                     # tracked, and never sent
                raw.sendto(build(kind, web, api, sport, 5000), (web.ip(family), 0))
        assert _quoted_ports(sniff.frames(), family, kind) == {4444}
    finally:
        sniff.close()


# --- 3. fail closed -------------------------------------------------------------------------

def silent_both_ways(a, b) -> dict:
    return outcomes([(a, b), (b, a)], FEW)


@pytest.mark.parametrize("state", ["pending", "quarantined"])
def test_inactive_port_sends_and_receives_nothing(lab, state):
    mon, web, port_c = lab.add(3)
    lab.apply("monitor->*, web->*", {mon: "monitor", web: "web"})
    lab.move(port_c, None, quarantine="invalid label" if state == "quarantined" else None)
    sniff_in, sniff_mon = Sniffer(port_c), Sniffer(mon)
    try:
        assert_all(silent_both_ways(mon, port_c), "timeout")
        assert_all(silent_both_ways(web, port_c), "timeout")
        assert probe_tcp(lab.outside, port_c.ip4, 8080) == "timeout"
        # the host side's own link-local chatter (DAD, MLD, RS) leaves the veth
        # without crossing the bridge
        own = mac_bytes(lab.link_mac(port_c.veth))
        assert [f for f in sniff_in.frames(0.2) if f[6:12] != own] == [], "a frame reached it"
        assert [f for f in sniff_mon.frames(0.2) if f[6:12] == mac_bytes(port_c.mac)] == []
    finally:
        sniff_in.close()
        sniff_mon.close()
    assert lab.dropped(state) > 0
    lab.move(port_c, "web")
    for c in (mon, port_c):   # the failed resolutions above would delay the next by ~1 s
        c.ip_cmd("neigh", "flush", "all")
    assert_all(silent_both_ways(mon, port_c), "ok")


# --- 4. anti-spoofing -----------------------------------------------------------------------

@pytest.fixture
def trio(lab):
    """attacker, observer, victim: one segment, intra=allow, so only anti-spoofing can drop."""
    trio = lab.add(3)
    lab.apply("", {c: "web" for c in trio})
    return trio


def send_udp_from(c, src_ip: str, dst, token: bytes) -> None:
    """One datagram from ``src_ip``; a static neighbour entry makes sure it leaves."""
    six = ":" in src_ip
    dst_ip = dst.ip6 if six else dst.ip4
    c.ip_cmd("neigh", "replace", dst_ip, "lladdr", dst.mac, "dev", "eth0", "nud", "permanent")
    with ns_socket(c.ns, socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src_ip, 0))
        s.sendto(token, (dst_ip, 9))


def arrives(lab, observer, send, needle: bytes) -> tuple:
    """(did a frame containing ``needle`` reach ``observer``, deny:spoofed delta)."""
    before = lab.dropped("spoofed")
    sniffer = Sniffer(observer)
    try:
        send()
        seen = any(needle in frame for frame in sniffer.frames(0.5))
    finally:
        sniffer.close()
    return seen, lab.dropped("spoofed") - before


@pytest.mark.parametrize("fam", [4, 6])
def test_spoofed_source_address_is_dropped(lab, trio, fam):
    attacker, observer, victim = trio
    own, spoof = attacker.ip(fam), ("10.236.0.200" if fam == 4 else "fd00:236::c8")
    plen = "24" if fam == 4 else "64"
    assert arrives(lab, observer, lambda: send_udp_from(attacker, own, observer, b"legit"),
                   b"legit") == (True, 0)
    for address in (spoof, victim.ip(fam)):
        attacker.ip_cmd("addr", "add", f"{address}/{plen}", "dev", "eth0", *(["nodad"] if fam == 6 else []))
        token = f"spoof-{address}".encode()
        seen, dropped = arrives(lab, observer, lambda: send_udp_from(attacker, address, observer, token),
                                token)
        assert not seen and dropped >= 1, (address, seen, dropped)
    assert probe_udp(attacker, observer.ip(fam), bind=own) == "ok"


def test_spoofed_mac_is_dropped_and_not_learned(lab, trio):
    attacker, observer, victim = trio
    for mac in ("02:42:0a:ec:00:ee", victim.mac):
        attacker.ip_cmd("link", "set", "dev", "eth0", "address", mac)
        for fam, own in ((4, attacker.ip4), (6, attacker.ip6)):
            token = f"mac-{mac}-{fam}".encode()
            seen, dropped = arrives(lab, observer, lambda: send_udp_from(attacker, own, observer, token),
                                    token)
            assert not seen and dropped >= 1, (mac, fam, seen, dropped)
    attacker.ip_cmd("link", "set", "dev", "eth0", "address", attacker.mac)
    # an ARP frame that is honest inside but sent from the victim's MAC
    frame = arp_frame(attacker.mac, attacker.ip4, attacker.ip4, eth_src=victim.mac)
    seen, dropped = arrives(lab, observer, lambda: send_frame(attacker, frame), frame[14:])
    assert not seen and dropped >= 1, (seen, dropped)
    assert probe_icmp(observer, victim.ip4) == "ok"   # the bridge did not learn the victim's MAC
    assert probe_icmp(attacker, observer.ip4) == "ok"


def test_a_tracked_flow_carries_no_spoofed_frames(lab, trio):
    """Once a flow is judged (eBPF: its packets take the fast path), a frame of the same
    5-tuple from another MAC, or sent from another container's veth, is still spoofed."""
    attacker, observer, victim = trio

    def frame(token: bytes, mac: str = attacker.mac) -> bytes:
        honest = udp4_frame(attacker, observer.mac, attacker.ip4, observer.ip4, 9, token, sport=4000)
        return honest[:6] + mac_bytes(mac) + honest[12:]

    for token in (b"tracked-1", b"tracked-2"):   # the flow opens, then is tracked
        assert arrives(lab, observer, lambda: send_frame(attacker, frame(token)), token) == (True, 0)
    for sender, mac in ((attacker, "02:42:0a:ec:00:ee"), (attacker, victim.mac), (victim, victim.mac)):
        token = f"tracked-{sender.index}-{mac}".encode()
        seen, dropped = arrives(lab, observer, lambda: send_frame(sender, frame(token, mac)), token)
        assert not seen and dropped >= 1, (sender.index, mac, seen, dropped)
    assert arrives(lab, observer, lambda: send_frame(attacker, frame(b"tracked-3")), b"tracked-3") == (True, 0)


def test_arp_for_another_address_is_dropped(lab, trio):
    attacker, observer, victim = trio
    legit = arp_frame(attacker.mac, attacker.ip4, attacker.ip4)
    assert arrives(lab, observer, lambda: send_frame(attacker, legit), legit[14:]) == (True, 0)
    for sender_mac in (attacker.mac, victim.mac):
        frame = arp_frame(sender_mac, victim.ip4, victim.ip4)
        seen, dropped = arrives(lab, observer, lambda: send_frame(attacker, frame), frame[14:])
        assert not seen and dropped >= 1, (sender_mac, seen, dropped)


def test_neighbour_advert_for_another_address_is_dropped(lab, trio):
    attacker, observer, victim = trio
    legit = na_frame(attacker.mac, attacker.ip6)
    assert arrives(lab, observer, lambda: send_frame(attacker, legit), legit[14:]) == (True, 0)
    frame = na_frame(attacker.mac, victim.ip6)
    seen, dropped = arrives(lab, observer, lambda: send_frame(attacker, frame), frame[14:])
    assert not seen and dropped >= 1, (seen, dropped)
    assert probe_icmp(observer, victim.ip6) == "ok"


def test_neighbour_solicit_from_another_link_local_is_dropped(lab, trio):
    attacker, observer, victim = trio
    legit = ns_frame(attacker.mac, link_local(attacker.mac), observer)
    assert arrives(lab, observer, lambda: send_frame(attacker, legit), legit[14:]) == (True, 0)
    frame = ns_frame(attacker.mac, link_local(victim.mac), observer)
    seen, dropped = arrives(lab, observer, lambda: send_frame(attacker, frame), frame[14:])
    assert not seen and dropped >= 1, (seen, dropped)


def test_router_advert_from_a_container_is_dropped(lab, trio):
    """From the container's own link-local address: dropped as ``router``, not ``spoofed``
    (FINDINGS-12, noticed); from another link-local address it is spoofed first."""
    attacker, observer, victim = trio
    events = lab.drop_events()
    body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    advert = icmp6_frame(attacker.mac, "33:33:00:00:00:01", link_local(attacker.mac), "ff02::1", body)
    seen, spoofed = arrives(lab, observer, lambda: send_frame(attacker, advert), advert[14:])
    assert not seen and spoofed == 0 and lab.dropped("router") == 1, (seen, spoofed)
    got = {(e.reason, e.src, e.dst, e.ifname) for e in drain(events, 1.0)}
    assert got == {("router", link_local(attacker.mac), "ff02::1", attacker.veth)}, got
    foreign = icmp6_frame(attacker.mac, "33:33:00:00:00:01", link_local(victim.mac), "ff02::1", body)
    seen, spoofed = arrives(lab, observer, lambda: send_frame(attacker, foreign), foreign[14:])
    assert not seen and spoofed == 1 and lab.dropped("router") == 1, (seen, spoofed)


def test_an_address_of_the_network_that_no_member_has_is_nobodys(lab):
    """A container on the bridge that is no member (yet: one that is starting) is never
    reached as if it were outside, whatever the egress default: not-member, both families."""
    web, late = lab.add(2)
    lab.apply("", {web: "web"}, "allow")
    assert_all(outcomes([(web, late)], FEW), "timeout")
    assert lab.dropped("not-member") >= 1
    assert probe_udp(web, late.ip4) == "timeout"


def test_a_container_receives_no_mark_of_the_host(lab):
    """What reaches a container carries no packet mark of the host's (the mark secnet sets for
    Docker's FORWARD chain): as over a bridge, where the veth clears it on the way in. On eBPF
    the judged frames skip the bridge and the veth's crossing, first packets and fast path alike;
    the container's own nftables rules and fwmark routing must not see them marked."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
    nft = ("ip", "netns", "exec", api.ns, "nft")   # in the container's namespace, gone with it
    sh(*nft, "add table inet snmark; add chain inet snmark seen { type filter hook prerouting "
           "priority -300; } ; add rule inet snmark seen meta l4proto tcp meta mark != 0 counter; "
           "add rule inet snmark seen meta l4proto tcp counter")
    assert parallel(probe_tcp, [(web, api.ip(fam), 8080) for fam in (4, 6) for _ in range(3)]) == ["ok"] * 6
    marked, every = (int(line.split("packets ")[1].split()[0]) for line in
                     sh(*nft, "list", "chain", "inet", "snmark", "seen").stdout.splitlines()
                     if "counter" in line)
    assert every >= 18 and marked == 0, (marked, every)
