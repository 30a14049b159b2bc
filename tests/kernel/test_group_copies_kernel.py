"""Broadcast and multicast between members (U12-F1, U12-F2), on every backend.

The bridge floods a frame sent to a group MAC (broadcast, multicast) to every
port. Each copy that reaches a member is judged by the sender's segment and
that member's segment: it passes when both are the same segment and
``secnet.intra`` is ``allow``, never to another segment (no rule opens a
group address; docs/ebpf.md, Semantics). Before the fix nftables delivered
them to every segment (a copy to the host confirmed the flow's conntrack entry
and the next packets passed as "confirmed") while it logged them as
``not-member``; eBPF dropped them within one segment too.

Address resolution is never policy's: ARP and neighbour solicitations (to the
solicited-node multicast group) between segments still work.
"""
from __future__ import annotations

import socket
import struct

import pytest

from nsfixtures import BRIDGE, drain
from packets import netns, ns_socket
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import probe_tcp

pytestmark = pytest.mark.kernel
PORT = 7400
SENT = 3          # datagrams per destination
GROUPS4 = ("10.236.0.255", "255.255.255.255", "224.0.0.1", "224.0.0.251")
GROUPS6 = ("ff02::1", "ff02::fb")


def _receiver(c, family: int) -> socket.socket:
    """A UDP socket in ``c`` on PORT (any address) that joined 224.0.0.251 / ff02::fb."""
    s = ns_socket(c.ns, family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with netns(c.ns):
        index = socket.if_nametoindex("eth0" if c.veth else BRIDGE)   # the host: its bridge
    if family == socket.AF_INET:
        s.bind(("0.0.0.0", PORT))
        mreq = struct.pack("4s4si", socket.inet_aton("224.0.0.251"), socket.inet_aton("0.0.0.0"), index)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    else:
        s.bind(("::", PORT))
        mreq = socket.inet_pton(socket.AF_INET6, "ff02::fb") + struct.pack("@I", index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    s.settimeout(0.2)
    return s


def _send(c, dst: str, tag: bytes) -> None:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = ns_socket(c.ns, family, socket.SOCK_DGRAM)
    try:
        with netns(c.ns):
            index = socket.if_nametoindex("eth0")
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("4s4si", socket.inet_aton(
                dst if dst.startswith("224.") else "224.0.0.1"), socket.inet_aton("0.0.0.0"), index))
            addr = (dst, PORT)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            addr = (dst, PORT, 0, index)
        for _ in range(SENT):
            s.sendto(tag, addr)
    finally:
        s.close()


def _received(s: socket.socket, tag: bytes) -> int:
    got = 0
    while True:
        try:
            data, _ = s.recvfrom(64)
        except (socket.timeout, BlockingIOError):
            return got
        got += data == tag


def _deliveries(sender, receivers: dict) -> dict:
    """{(receiver name, group address): datagrams received of SENT}."""
    socks = {(name, fam): _receiver(c, fam) for name, c in receivers.items()
             for fam in (socket.AF_INET, socket.AF_INET6)}
    try:
        out = {}
        for dst in GROUPS4 + GROUPS6:
            tag = f"g{dst}".encode()
            _send(sender, dst, tag)
            fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
            for name in receivers:
                out[(name, dst)] = _received(socks[(name, fam)], tag)
        return out
    finally:
        for s in socks.values():
            s.close()


def _where(got: dict, name: str, want: int) -> list:
    return [(dst, n) for (who, dst), n in got.items() if who == name and n != want]


def test_group_copies_follow_the_segments(lab):
    web, web2, api = lab.add(3)
    lab.apply("web->api:udp/7400 web->api:tcp/8080", {web: "web", web2: "web", api: "api"})
    events = lab.drop_events()
    got = _deliveries(web, {"web2": web2, "api": api})
    assert _where(got, "web2", SENT) == [], f"same segment (intra=allow) did not get all: {got}"
    # another segment never, even with a rule to its udp/7400 (a group address is no member)
    assert _where(got, "api", 0) == [], f"another segment got web's group copies: {got}"
    logged = drain(events, 1.0)
    wrong = [e for e in logged if e.reason == "not-member"]
    assert wrong == [], f"group copies logged as not-member: {wrong[:3]}"
    assert any(e.reason == "no-rule" and e.port == PORT for e in logged), \
        f"the copies to api were not reported: {logged[:5]}"
    assert lab.dropped("not-member") == 0
    assert lab.dropped("no-rule") >= SENT * 2   # at least one v4 and one v6 address
    _assert_counted_per_pair(lab)


def _assert_counted_per_pair(lab, audit: bool = False) -> None:
    """`show`'s and the metrics' pair drop counts (``per_pair``) hold the copies dropped
    at api as web->api, as the per-reason total does: every no-rule drop here is one.
    Before, nftables counted them per reason only (its bridge table had no pair sets)."""
    from plugin.observe.counting import per_pair   # noqa: PLC0415
    _allowed, dropped, would = per_pair(lab.policy, lab.counters())
    pairs = {k: v for k, v in (would if audit else dropped).items() if v[0]}
    total = lab.dropped("no-rule", audit=audit)
    assert total >= SENT * 2 and pairs == {("web", "api"): [total, pairs[("web", "api")][1]]}, (pairs, total)


def test_group_copies_are_counted_per_pair_in_audit_mode(lab):
    web, web2, api = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", web2: "web", api: "api"}, mode="audit")
    got = _deliveries(web, {"web2": web2, "api": api})
    assert _where(got, "api", SENT) == [], f"audit mode: api gets them: {got}"
    _assert_counted_per_pair(lab, audit=True)


def test_intra_deny_drops_group_copies_in_the_segment(lab):
    web, web2, api = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", web2: "web", api: "api"}, intra="deny")
    got = _deliveries(web, {"web2": web2, "api": api})
    assert _where(got, "web2", 0) == [] and _where(got, "api", 0) == [], got


def test_group_copies_pass_again_when_intra_is_allowed(lab):
    web, web2 = lab.add(2)
    lab.apply("", {web: "web", web2: "web"}, intra="deny")
    assert _where(_deliveries(web, {"web2": web2}), "web2", 0) == []
    lab.update(intra="allow")
    got = _deliveries(web, {"web2": web2})
    assert _where(got, "web2", SENT) == [], got


def test_address_resolution_between_segments_still_works(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    for c in (web, api):
        c.ip_cmd("neigh", "flush", "all")
        c.ip_cmd("-6", "neigh", "flush", "all")
    assert probe_tcp(web, api.ip4, 8080) == "ok"     # ARP request: broadcast
    assert probe_tcp(web, api.ip6, 8080) == "ok"     # neighbour solicitation: multicast


@pytest.mark.parametrize("egress", ["allow", "deny"])
def test_the_host_copy_follows_egress(lab, egress):
    web, web2 = lab.add(2)
    lab.apply("", {web: "web", web2: "web"}, egress=egress)
    got = _deliveries(web, {"web2": web2, "host": lab.host_box})
    assert _where(got, "web2", SENT) == [], f"same segment (egress={egress}): {got}"
    # the host's copy: egress (the host is outside); 224.0.0.251/ff02::fb: the host did not join
    host = {dst: n for (who, dst), n in got.items() if who == "host"}
    want = SENT if egress == "allow" else 0
    assert [d for d in ("10.236.0.255", "255.255.255.255", "224.0.0.1", "ff02::1") if host[d] != want] == [], host
