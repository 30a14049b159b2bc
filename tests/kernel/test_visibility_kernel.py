"""Drops reported through NFLOG and read by plugin.nflog, and plugin.probes'
real packets, in a throwaway lab (see vis_lab.py): the kernel, not a model."""
from __future__ import annotations

import os
import queue
import socket
import struct
import subprocess
import time

import pytest

from plugin.kernel import netns

from plugin import nflog

from plugin.observe import probes
from segmentation.backends.nft_verdicts import NFLOG_GROUP
from vis_lab import NET_ID, vislab  # noqa: F401  (fixture)

pytestmark = pytest.mark.kernel


@pytest.fixture
def reader(vislab):
    """An NflogReader bound to secnet's group inside the lab's host namespace."""
    got: queue.Queue = queue.Queue()
    r = nflog.NflogReader(NFLOG_GROUP, lambda p, t: got.put((p, t)),
                          sock_factory=lambda: netns.run_in(vislab.host_path, nflog.open_socket, NFLOG_GROUP))
    r.start(wait=5)
    r.got = got
    yield r
    r.stop()


def drain(q: queue.Queue, wait: float) -> list:
    out, deadline = [], time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        try:
            out.append(q.get(timeout=left))
        except queue.Empty:
            return out


def send_udp(box, dst: str, port: int, count: int = 1, family=socket.AF_INET) -> None:
    s = box.socket(family, socket.SOCK_DGRAM)
    with s:
        for _ in range(count):
            s.sendto(b"x", (dst, port))


def test_a_dropped_flow_is_logged_once_per_second(vislab, reader):
    web, api, db = vislab.add(3)
    vislab.apply("web->api:tcp/8080", [web.port("web"), api.port("api"), db.port("db")])
    send_udp(web, api.ip4, 5432, count=1)     # warms the neighbour cache (and is itself logged)
    drain(reader.got, 0.5)
    sent = time.time()
    send_udp(web, db.ip4, 5432, count=20)     # one flow, twenty packets
    send_udp(web, db.ip4, 5433)               # another flow
    send_udp(web, db.ip6, 5432, family=socket.AF_INET6)
    got = [(p, t) for p, t in drain(reader.got, 1.0) if p.flow().proto == "udp"]
    flows = sorted((p.flow().family, p.flow().dport) for p, _t in got)
    assert flows == [(4, 5432), (4, 5433), (6, 5432)], [(p.prefix, p.flow()) for p, _ in got]
    p, when = next(x for x in got if x[0].flow().dport == 5432 and x[0].flow().family == 4)
    assert p.prefix == f"sn {NET_ID[:12]} no-rule"
    assert p.flow() == nflog.Flow(4, "udp", web.ip4, db.ip4, p.flow().sport, 5432)
    assert p.devices.get("physindev") == vislab.ifindex(web.veth)
    assert when - sent < 0.5
    time.sleep(1.1)
    send_udp(web, db.ip4, 5432, count=5)      # a second later: logged again, once
    assert [x[0].flow().dport for x in drain(reader.got, 0.7) if x[0].flow().proto == "udp"] == [5432]


def test_bridge_table_drops_are_logged_with_their_reason(vislab, reader):
    web, api, bad = vislab.add(3)
    vislab.apply("*->*", [web.port("web"), api.port("api"), bad.port(quarantine="empty label")])
    send_udp(bad, api.ip4, 53)
    frame = spoofed_ipv4_frame(web, "10.224.250.99", api.ip4)
    with netns.run_in(web.path, socket.socket, socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("eth0", 0))
        s.send(frame)
    messages = [p for p, _t in drain(reader.got, 1.0)]
    reasons = {p.prefix.split()[-1] for p in messages}
    assert {"quarantined", "spoofed"} <= reasons, reasons
    spoofed = next(p for p in messages if p.prefix.endswith("spoofed") and p.hw_protocol == 0x0800)
    assert spoofed.family == nflog.NFPROTO_BRIDGE and spoofed.hw_protocol == 0x0800
    assert spoofed.flow().src == "10.224.250.99" and spoofed.flow().dport == 7
    assert spoofed.devices.get("physindev") == vislab.ifindex(web.veth)
    quarantined = [p for p in messages if p.prefix.endswith("quarantined")]
    assert any(p.devices.get("physindev") == vislab.ifindex(bad.veth) for p in quarantined)


def spoofed_ipv4_frame(box, fake_src: str, dst: str) -> bytes:
    udp = struct.pack("!HHHH", 4000, 7, 9, 0) + b"x"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(fake_src), socket.inet_aton(dst))
    dst_mac = b"\xff" * 6
    return dst_mac + bytes.fromhex(box.mac.replace(":", "")) + b"\x08\x00" + ip + udp


def test_probes_observe_what_the_policy_lets_through(vislab):
    web, api, db = vislab.add(3)
    vislab.apply("web->api:tcp/8080 web->api:udp/53 *->db:icmp", [web.port("web"), api.port("api"),
                                                                   db.port("db")])
    busy = api.socket(socket.AF_INET, socket.SOCK_DGRAM)   # an app of the container's own on udp/53
    busy.bind((api.ip4, 53))
    cases = [("tcp", api, 8080, 4, True), ("tcp", api, 8080, 6, True), ("tcp", api, 5432, 4, False),
             ("udp", api, 53, 4, True), ("udp", api, 54, 4, False), ("udp", api, 53, 6, True),
             ("icmp", db, None, 4, True), ("icmp", db, None, 6, True), ("icmp", api, None, 4, False)]
    specs = [probes.Spec(i, proto, fam, web.path, web.ip4 if fam == 4 else web.ip6, dst.path,
                         dst.ip4 if fam == 4 else dst.ip6, port)
             for i, (proto, dst, port, fam, _want) in enumerate(cases)]
    fds = len(os.listdir("/proc/self/fd"))
    started = time.monotonic()
    outcome = probes.Session(specs, timeout=0.5).run()
    took = time.monotonic() - started
    left_open = len(os.listdir("/proc/self/fd")) - fds
    busy.close()
    got = {i: probes.reached(outcome[i]) for i in range(len(cases))}
    want = {i: c[-1] for i, c in enumerate(cases)}
    assert got == want, {i: (cases[i], outcome[i]) for i in got if got[i] != want[i]}
    assert took < 1.5 and left_open == 0
    listening = vislab_listeners(api)
    assert ":8080" not in listening, listening


def vislab_listeners(box) -> str:
    return subprocess.run(["ip", "netns", "exec", box.ns, "ss", "-ltnH"], capture_output=True,
                          text=True, timeout=10).stdout


def test_nflog_group_is_exclusive_per_namespace(vislab, reader):
    with pytest.raises(OSError):
        netns.run_in(vislab.host_path, nflog.open_socket, NFLOG_GROUP)
