"""Two members of one segment talk over their own IPv6 link-local addresses (user10, U10-F4).

On Docker's bridge `ping -6 fe80::...%eth0` between two containers is answered. secnet drops
it on both backends, and `secnet log` calls the sender "spoofed: address not the one the
network gave" although fe80:: is the address the kernel derived from the MAC the network
gave (and names the peer's link-local "(outside)"). The kernel tier has the same check
(tests/kernel/test_link_local_kernel.py)."""
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


@pytest.mark.xfail(strict=True, reason="U10-F4: a member's own link-local source is dropped and logged as "
                                       "spoofed (bridge table spoofing chain / bpf lib/spoof.h); not fixed")
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
