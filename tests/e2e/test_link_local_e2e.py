"""Two members of one segment talk over their own IPv6 link-local addresses (user10, U10-F4).

On Docker's bridge `ping -6 fe80::...%eth0` between two containers is answered. The
EUI-64 link-local address of the MAC the network gave a member is one of its addresses
on both backends: judged by policy (same segment, intra=allow: it passes), never
logged as `spoofed`. The kernel tier has the same check and the cases between segments,
quarantine and forged sources (tests/kernel/test_link_local_kernel.py)."""
from __future__ import annotations

import time

import pytest

import helpers as h
import seg_helpers as s
from vis_helpers import secnet

pytestmark = pytest.mark.usefixtures("backend")   # every test on every datapath


def link_local(c: h.Container, within: float = 10.0) -> str:
    """``c``'s link-local address once its duplicate address detection is done."""
    deadline = time.monotonic() + within
    while True:
        out = h.in_netns(c, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link").stdout
        if out and "tentative" not in out:
            return out.split()[3].split("/")[0]
        assert time.monotonic() < deadline, f"{c.name}: no settled link-local address: {out!r}"
        time.sleep(0.2)


def test_echo_between_link_local_addresses_of_one_segment(make_network, run_container):
    net = make_network("sn-ll", ipv6=True)
    a = run_container(net, "lla", labels={"secnet.segment": "web"})
    b = run_container(net, "llb", labels={"secnet.segment": "web"})
    s.wait_segments(net, {a.name: "web", b.name: "web"})
    h.assert_reaches(a, b, family=6)          # the global addresses: intra=allow
    target = f"{link_local(b)}%eth0"
    link_local(a)
    res = h.in_netns(a, h.BUSYBOX, "ping", "-6", "-c2", "-W2", target)
    spoofed = [l for l in secnet("log", net.name).stdout.splitlines() if "spoofed" in l and a.name in l]
    assert res.returncode == 0 and not spoofed, \
        f"ping -6 {target} from {a.name}: rc {res.returncode}; log: {spoofed}"


def test_link_local_between_segments_is_judged_and_named(make_network, run_container):
    """Another segment without a rule: dropped as "no rule allows it", the log naming both
    containers by their link-local addresses; `explain` answers for those addresses."""
    net = make_network("sn-ll2", ipv6=True)
    a = run_container(net, "llweb", labels={"secnet.segment": "web"})
    b = run_container(net, "lldb", labels={"secnet.segment": "db"})
    s.wait_segments(net, {a.name: "web", b.name: "db"})
    src, dst = link_local(a), link_local(b)
    res = h.in_netns(a, h.BUSYBOX, "ping", "-6", "-c2", "-W2", f"{dst}%eth0")
    assert res.returncode != 0, f"ping -6 {dst}%eth0 from {a.name} (web) to {b.name} (db): answered"

    def lines():
        return [l for l in secnet("log", net.name).stdout.splitlines() if a.name in l and b.name in l]
    found = h.wait_until(lines, 10, f"a log line naming {a.name} and {b.name}")
    assert all("no rule allows it" in l and "spoofed" not in l for l in found), found
    assert any(src in l and dst in l for l in found), found
    text = secnet("explain", net.name, src, dst, "icmp").stdout
    assert text.startswith("denied") and a.name in text and b.name in text, text
