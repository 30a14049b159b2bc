"""Broadcast and multicast between segments (U12-F1, U12-F2), on both backends: the user's
view, real containers and the daemon's drop log.

A member's broadcast or multicast reaches the members of its own segment (intra=allow),
never another segment, not even one a rule opens for that port; the drop log names no
`not-member` for them. The mechanism is checked in the kernel tier
(tests/kernel/test_group_copies_kernel.py).
"""
from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import pytest

import helpers as h
import seg_helpers as s
import vis_helpers as v

pytestmark = pytest.mark.usefixtures("backend")
PORT = 7401
SENT = 3
RECEIVE = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", %d)); s.settimeout(0.2)
print("ready", flush=True)
got, end = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        got += s.recvfrom(64)[0] == b"group"
    except socket.timeout:
        pass
print(got, flush=True)
""" % PORT
SEND = """
import socket, sys
ix = socket.if_nametoindex("eth0")
for dst in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        addr = (dst, %d)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ix)
        addr = (dst, %d, 0, ix)
    for _ in range(%d):
        s.sendto(b"group", addr)
""" % (PORT, PORT, SENT)


def _receive(c: h.Container, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(["nsenter", f"--net={c.sandbox}", sys.executable, "-c", RECEIVE,
                             str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_group_copies_reach_the_own_segment_only(make_network, run_container):
    net = make_network("sn-gc", ipv6=True, opts={"secnet.allow": f"web->api:udp/{PORT}"})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    web2 = run_container(net, "web2", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    s.wait_segments(net, {web.name: "web", web2.name: "web", api.name: "api"})
    groups = [str(ipaddress.ip_network(net.subnet).broadcast_address), "255.255.255.255", "ff02::1"]
    since = v.log_cursor()
    receivers = {c.name: _receive(c, 3.0) for c in (web2, api)}
    try:
        h.run(["nsenter", f"--net={web.sandbox}", sys.executable, "-c", SEND, *groups])
        got = {name: int(p.communicate(timeout=10)[0].strip()) for name, p in receivers.items()}
    finally:
        for p in receivers.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert got == {web2.name: SENT * len(groups), api.name: 0}, got
    time.sleep(0.5)
    entries = [e for e in v.log_since(net, since)["entries"] if e.get("dport") == PORT]
    wrong = [e for e in entries if e["reason"] == "not-member"]
    assert wrong == [], f"group copies logged as not-member: {wrong[:2]}"
    assert any(e["reason"] == "no-rule" for e in entries), f"the copies to api not logged: {entries[:3]}"
    # the metrics (and show) count the dropped copies in their pair, as in the reason's total
    values, nid = v.metrics(), net.id[:12]
    pair = v.sample(values, "secnet_dropped_packets_total", network=nid, src_segment="web", dst_segment="api")
    total = v.sample(values, "secnet_drops_total", network=nid, reason="no-rule")
    assert pair == total >= SENT * len(groups), (pair, total)
