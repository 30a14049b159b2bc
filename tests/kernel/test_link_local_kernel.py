"""A member's traffic from its own IPv6 link-local address (user10, U10-F4).

The kernel gives every container's eth0 the EUI-64 link-local address of the MAC the
network gave it; on Docker's bridge `ping -6 fe80::...%eth0` between two containers
works. That address is one of the member's own: anti-spoofing admits it (and only it:
another member's link-local, or one of another scheme, is `spoofed`), and policy judges
link-local flows as it judges flows between the global addresses -- same segment with
intra=allow passes, another segment without a rule is dropped as "no-rule", a rule lets
it through (and its replies), a quarantined member gets nothing, a policy change ends a
flow it denies. Runs once per backend (nsfixtures.BACKENDS).
"""
from __future__ import annotations

import socket
import struct
import time

from nsfixtures import drain, lab  # noqa: F401 (fixture)
from packets import echoes, icmp6_frame, link_local, ns_socket, probe_icmp, send_frame, sh

PORT = 8080   # the lab responder's TCP echo port (every address)


def delta(lab, before: dict) -> dict:
    """reason -> packets the backend counted as dropped since ``before``."""
    after = lab.counters().reasons
    return {k: v[0] - before.get(k, (0, 0))[0] for k, v in after.items() if v != before.get(k)}


def ping_ll(src, dst) -> bool:
    """Does ``dst`` answer an echo to its link-local address from ``src``'s eth0?"""
    res = sh("ip", "netns", "exec", src.ns, "ping", "-6", "-c2", "-i0.3", "-W2",
             f"{link_local(dst.mac)}%eth0", check=False)
    return res.returncode == 0


def ll_stream(src, dst) -> socket.socket | None:
    """A TCP connection from ``src`` to ``dst``'s link-local address (None: no answer).
    The responder echoes once per connection; :func:`packets.echoes` tries it."""
    out = sh("ip", "-n", src.ns, "-o", "link", "show", "dev", "eth0").stdout
    scope = int(out.split(":")[0])   # eth0's ifindex in its namespace
    s = ns_socket(src.ns, socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect((link_local(dst.mac), PORT, 0, scope))
    except OSError:
        s.close()
        return None
    return s


def settled(*cs, within: float = 10.0) -> None:
    """Wait until every container's link-local address is past duplicate address
    detection (``tentative``: the kernel does not send from it yet)."""
    deadline = time.monotonic() + within
    for c in cs:
        while True:
            out = sh("ip", "-n", c.ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link").stdout
            if link_local(c.mac) in out and "tentative" not in out:
                break
            assert time.monotonic() < deadline, f"{c.ns}: no settled link-local address: {out!r}"
            time.sleep(0.1)


def test_echo_between_link_local_addresses_of_one_segment(lab):
    a, b = lab.add(2)
    lab.apply("", {a: "web", b: "web"})
    assert probe_icmp(a, b.ip6) == "ok"   # the global addresses: allowed (and DAD is done)
    before = dict(lab.counters().reasons)
    res = sh("ip", "netns", "exec", a.ns, "ping", "-6", "-c2", "-W2", f"{link_local(b.mac)}%eth0", check=False)
    drops = delta(lab, before)
    assert res.returncode == 0 and not drops, \
        f"echo over link-local between two web members: rc {res.returncode}, drops {drops}"


def test_link_local_between_segments_is_judged_by_policy(lab):
    web, db = lab.add(2)
    lab.apply("", {web: "web", db: "db"})
    settled(web, db)
    before = dict(lab.counters().reasons)
    assert not ping_ll(web, db) and ll_stream(web, db) is None
    drops = delta(lab, before)
    assert drops.get("no-rule", 0) >= 2 and "spoofed" not in drops, f"no rule web->db: drops {drops}"

    lab.update("web->db:tcp/8080 web->db:icmp")
    before = dict(lab.counters().reasons)
    assert ping_ll(web, db), "web->db:icmp allows echo to db's link-local address"
    s = ll_stream(web, db)
    assert s is not None and echoes(s), "web->db:tcp/8080 to db's link-local address: replies pass"
    s.close()
    assert not ping_ll(db, web), "db->web has no rule"
    drops = delta(lab, before)
    assert set(drops) == {"no-rule"}, f"only db->web is dropped, as no-rule: {drops}"
    kept, cut = ll_stream(web, db), ll_stream(web, db)   # (the responder echoes once per stream)
    try:
        lab.update("web->db:tcp/8080")    # the echo rule goes, the TCP one stays
        assert echoes(kept), "a link-local flow the policy still allows goes on"
        lab.update("web->db:icmp")        # the TCP rule goes: its established flow ends
        assert not echoes(cut), "a link-local flow the new policy denies goes on"
    finally:
        kept.close()
        cut.close()


def test_quarantined_member_gets_nothing_over_link_local(lab):
    a, b = lab.add(2)
    lab.apply("", {a: "web", b: "web"})
    settled(a, b)
    assert ping_ll(a, b)
    lab.move(b, "web", quarantine="test")
    before = dict(lab.counters().reasons)
    assert not ping_ll(a, b) and not ping_ll(b, a)
    drops = delta(lab, before)
    assert drops.get("quarantined", 0) >= 2 and "spoofed" not in drops, f"drops {drops}"


def echo_request(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str) -> bytes:
    return icmp6_frame(src_mac, dst_mac, src_ip, dst_ip, struct.pack("!BBHHH", 128, 0, 0, 7, 1) + b"ll6-forged")


def test_forged_link_local_source_is_dropped_as_spoofed(lab):
    a, b, c = lab.add(3)
    lab.apply("", {a: "web", b: "web", c: "web"})
    settled(a, b, c)
    for src_ip in (link_local(b.mac),      # another member's own
                   "fe80::1234:5678:9abc:def0"):   # another scheme (stable-privacy, random)
        before = dict(lab.counters().reasons)
        send_frame(a, echo_request(a.mac, c.mac, src_ip, link_local(c.mac)))
        drops = delta(lab, before)
        assert drops == {"spoofed": 1}, f"echo from {src_ip} sent by {a.veth}: drops {drops}"
    before = dict(lab.counters().reasons)
    send_frame(a, echo_request(a.mac, c.mac, link_local(a.mac), link_local(c.mac)))
    assert delta(lab, before) == {}, "its own link-local source is judged (and allowed)"


def test_audit_mode_passes_and_reports_link_local_flows_policy_denies(lab):
    web, db = lab.add(2)
    events = lab.drop_events()
    lab.apply("", {web: "web", db: "db"}, mode="audit")
    settled(web, db)
    before = dict(lab.counters().reasons)
    assert ping_ll(web, db), "audit mode: a link-local echo no rule allows passes"
    got = [e for e in drain(events, 1.0) if e.family == 6]
    seen = {(e.reason, e.audit, e.src, e.dst) for e in got}
    assert ("no-rule", True, link_local(web.mac), link_local(db.mac)) in seen, got
    assert lab.dropped("no-rule", audit=True) >= 1 and delta(lab, before) == {}
