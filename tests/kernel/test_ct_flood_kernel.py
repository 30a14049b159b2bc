"""One segment's flood of flows nobody answers must not end other segments'
established flows (U21-F1).

The eBPF flow table was one LRU hash per network: a member sending allowed UDP
datagrams to thousands of ports of a silent peer filled it, and LRU evicted the
idle established flows of everybody else; a server's next push was then judged
as a flow of its own (no rule: dropped). Now flows no reply has been seen of
live in a table of their own (``ct_new``, lib/conntrack.h) and move to
``conntrack`` with their first reply, as the kernel's conntrack marks an entry
SEEN_REPLY and its early_drop never takes an ASSURED one (nftables).

The eBPF lab's tables are made small (:data:`SIZES`), so that a flood of 8x
their size takes well under a second; on nftables the host's conntrack holds it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import time

import pytest

import nsfixtures
from nsfixtures import BACKENDS, NET_ID, InNamespace, lab, only  # noqa: F401 (lab is a fixture)
from packets import ns_socket, probe_tcp, tcp_syn_frame
from plugin.enforce.ebpf import libbpf, maps, pins
from upgrade_lab import restart, write_with_older_build

pytestmark = pytest.mark.kernel

TABLE = 1024                            # entries of each eBPF flow table in this lab
SIZES = {"conntrack": TABLE, "ct_new": TABLE}
FLOOD_PORTS = range(20000, 20000 + 8 * TABLE)   # 8x the table in flows, 16x in entries
SYN_PORTS = range(30000, 30000 + 4 * TABLE)     # source ports of SYNs to a listener, ports of SYNs to none
PUSH, LATE = 8181, 7200
RULES = f"vc->vs:tcp/8080, vc->vs:tcp/{PUSH}, vc->vs:udp/{LATE}, fl->fs:udp, fl->fs:tcp"
WAIT = 3.0                              # s: a push that has not arrived by then was dropped
CT_REPLY = 1                            # bpf/lib/common.h
#: the last commit before ``ct_new``: its build keeps every flow in ``conntrack``
PRE_CT_NEW = "7843e61a784e77acb809850ccf0b73c1a7b5a7cd"
PRE_CT_NEW_MAPS = tuple(m for m in pins.MAPS if m != "ct_new")


def _small_tables(lab) -> None:
    """This lab's eBPF backend, its flow tables :data:`SIZES` big."""
    if lab.backend_name != "ebpf":
        return
    from plugin.enforce.ebpf.backend import EbpfBackend   # noqa: PLC0415
    from plugin.enforce.nftables.natonly import NatTable   # noqa: PLC0415
    lab.backend.shutdown()
    lab.backend = InNamespace(lab.host, lambda: EbpfBackend(pin_root=lab.pin_root, nat=NatTable(),
                                                            sizes=SIZES))


def _table(lab, name: str) -> dict:
    """The entries of flow table ``name``: CT_KEY fields -> CT_VAL fields."""
    fd = libbpf.obj_get(os.path.join(lab.pin_root, NET_ID[:12], name))
    try:
        out = {}
        for key in list(libbpf.keys(fd, maps.CT_KEY.size)):
            raw = libbpf.lookup(fd, key, maps.CT_VAL.size)
            if raw is not None:
                out[maps.CT_KEY.unpack(key)] = maps.CT_VAL.unpack(raw)
        return out
    finally:
        os.close(fd)


def _flow(src: tuple, dst: tuple, proto: int) -> tuple:
    """Both CT_KEY tuples of an IPv4 flow ``src`` (address, port) -> ``dst``."""
    a, b = maps.addr16(src[0]), maps.addr16(dst[0])
    return (a, b, src[1], dst[1], proto, 4, 0), (b, a, dst[1], src[1], proto, 4, 0)


class Sessions:
    """What vc and vs share before the flood, each spoken both ways: a TCP
    connection in each family (vs's side accepted) and an answered UDP exchange."""

    def __init__(self, vc, vs):
        self.sockets, self.tcp = [], []
        for fam, ip in ((socket.AF_INET, vs.ip4), (socket.AF_INET6, vs.ip6)):
            server = self._sock(vs.ns, fam, socket.SOCK_STREAM)
            server.bind((ip, PUSH))
            server.listen(1)
            client = self._sock(vc.ns, fam, socket.SOCK_STREAM)
            client.connect((ip, PUSH))
            conn, _ = server.accept()
            self.sockets.append(conn)
            self.tcp.append((client, conn))
        self.udp_server = self._sock(vs.ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_server.bind((vs.ip4, LATE))
        self.udp_client = self._sock(vc.ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_client.connect((vs.ip4, LATE))
        for client, conn in self.tcp:
            client.send(b"hello")
            assert conn.recv(64) == b"hello"
            conn.send(b"welcome")
            assert client.recv(64) == b"welcome"
        self.udp_client.send(b"query")
        _data, self.udp_peer = self.udp_server.recvfrom(64)
        self.udp_server.sendto(b"answer", self.udp_peer)
        assert self.udp_client.recv(64) == b"answer"

    def _sock(self, ns, fam, kind) -> socket.socket:
        s = ns_socket(ns, fam, kind)
        s.settimeout(WAIT)
        self.sockets.append(s)
        return s

    def server_speaks(self) -> list:
        """vs speaks first on each session (the client stays silent): what vc got."""
        for _client, conn in self.tcp:
            conn.send(b"push")
        self.udp_server.sendto(b"later", self.udp_peer)
        got = []
        for client in [c for c, _ in self.tcp] + [self.udp_client]:
            try:
                got.append(client.recv(64))
            except OSError as exc:   # socket.timeout: dropped
                got.append(type(exc).__name__)
        return got

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def flood(fl, fs) -> None:
    """Allowed flows from fl to fs that are never answered as a connection is: one UDP
    datagram to each of :data:`FLOOD_PORTS` (nothing listens there: fs answers, rate-
    limited, with port unreachable errors), and raw SYNs from each of :data:`SYN_PORTS`
    to fs:8080 (a listener: fs answers SYN|ACK, fl's kernel resets) and to each of them
    on fs (nobody listens: fs answers RST|ACK)."""
    with ns_socket(fl.ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i, port in enumerate(FLOOD_PORTS):
            _send(lambda: s.sendto(b"x", (fs.ip4, port)), i)   # noqa: B023 (called at once)
    with ns_socket(fl.ns, socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind(("eth0", 0))
        for i, port in enumerate(SYN_PORTS):
            for frame in (tcp_syn_frame(fl, fs.mac, fs.ip4, 8080, sport=port),
                          tcp_syn_frame(fl, fs.mac, fs.ip4, port, sport=40000)):
                _send(lambda: raw.send(frame), i)   # noqa: B023 (called at once)


def _send(send, i: int) -> None:
    while True:
        try:
            send()
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                raise
            time.sleep(0.001)
    if i % 256 == 255:
        time.sleep(0.002)   # the veth's backlog: each packet reaches the program


def test_a_flood_of_unanswered_flows_ends_no_established_flow(lab):
    """vc and vs have spoken; fl floods fs with 8x the flow table of allowed, unanswered
    UDP flows; then vs speaks first on every session: it arrives. New flows still open."""
    _small_tables(lab)
    vc, vs, fl, fs = lab.add(4)
    lab.apply(RULES, {vc: "vc", vs: "vs", fl: "fl", fs: "fs"}, intra="deny")
    sessions = Sessions(vc, vs)
    try:
        start = time.monotonic()
        flood(fl, fs)
        print(f"flood of {len(FLOOD_PORTS) + 2 * len(SYN_PORTS)} flows: {time.monotonic() - start:.2f} s")
        assert sessions.server_speaks() == [b"push", b"push", b"later"]
        assert probe_tcp(vc, vs.ip4, 8080) == "ok"                   # a new flow opens
        assert probe_tcp(vs, vc.ip4, 8080) == "timeout"              # and the policy holds
        if lab.backend_name == "ebpf":
            _the_flood_stayed_in_ct_new(lab, fl, fs)
    finally:
        sessions.close()


def _the_flood_stayed_in_ct_new(lab, fl, fs) -> None:
    """The flood filled ct_new (so it overflowed the table a flow is made in) and
    left conntrack alone: no entry of fl's flows to fs there."""
    ends = {maps.addr16(fl.ip4), maps.addr16(fs.ip4)}

    def flooded(table):
        return [k for k in table if {k[0], k[1]} == ends]
    new, est = _table(lab, "ct_new"), _table(lab, "conntrack")
    assert len(flooded(new)) > TABLE * 3 // 4, len(flooded(new))
    assert flooded(est) == []


@only("ebpf")
def test_a_flow_moves_to_the_established_table_with_its_first_reply(lab):
    """A flow's first packet puts both its entries in ct_new; an ICMP error about it
    (related, not a reply) leaves them there; its first reply moves both, as they
    were (generation, kind, flags), to conntrack."""
    vc, vs = lab.add(2)
    lab.apply(f"vc->vs:udp/{LATE}, vc->vs:udp/{LATE + 1}", {vc: "vc", vs: "vs"}, intra="deny")
    with ns_socket(vs.ns, socket.AF_INET, socket.SOCK_DGRAM) as server, \
            ns_socket(vc.ns, socket.AF_INET, socket.SOCK_DGRAM) as client, \
            ns_socket(vc.ns, socket.AF_INET, socket.SOCK_DGRAM) as refused:
        for s in (server, client, refused):
            s.settimeout(WAIT)
        server.bind((vs.ip4, LATE))
        client.connect((vs.ip4, LATE))
        client.send(b"query")
        _data, peer = server.recvfrom(64)
        orig, reply = _flow(peer, (vs.ip4, LATE), socket.IPPROTO_UDP)
        new = _table(lab, "ct_new")
        assert {orig, reply} <= set(new) and not {orig, reply} & set(_table(lab, "conntrack"))
        assert new[orig][2] == 0 and new[reply][2] == CT_REPLY

        refused.connect((vs.ip4, LATE + 1))   # nothing listens: vs answers port unreachable
        refused.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            refused.recv(64)
        gone = _flow(refused.getsockname(), (vs.ip4, LATE + 1), socket.IPPROTO_UDP)
        assert set(gone) <= set(_table(lab, "ct_new"))
        assert not set(gone) & set(_table(lab, "conntrack"))

        server.sendto(b"answer", peer)
        assert client.recv(64) == b"answer"
        est = _table(lab, "conntrack")
        assert {orig, reply} <= set(est) and not {orig, reply} & set(_table(lab, "ct_new"))
        for key in (orig, reply):   # seen, generation, flags, kind: as in ct_new (seen: refreshed)
            assert est[key][1:4] == new[key][1:4], (key, est[key], new[key])


def _map_id(lab, name: str) -> int:
    pin = os.path.join(lab.pin_root, NET_ID[:12], name)
    shown = subprocess.run(["bpftool", "-j", "map", "show", "pinned", pin], check=True,
                           capture_output=True, text=True).stdout
    return json.loads(shown)["id"]


@only("ebpf")
def test_a_network_pinned_before_ct_new_is_upgraded_with_its_established_flows(
        lab, tmp_path, monkeypatch, caplog):
    """A network the build before ``ct_new`` made (one table): the new daemon's first
    pass makes ct_new and keeps the pinned conntrack, entries and all, as the table of
    answered flows: vs speaking first on sessions opened under the older build arrives."""
    vc, vs = lab.add(2)
    state, _net = nsfixtures.saved_network(lab, str(tmp_path / "state"),
                                           f"web->api:tcp/{PUSH}, web->api:udp/{LATE}", vc, vs)
    sessions = None
    try:
        write_with_older_build(lab, state, tmp_path, monkeypatch, PRE_CT_NEW, PRE_CT_NEW_MAPS, "ct_new")
        sessions = Sessions(vc, vs)
        kept = _map_id(lab, "conntrack")
        with caplog.at_level(logging.INFO):
            restart(lab, state, BACKENDS["ebpf"])
        assert "of another shape" not in caplog.text
        assert _map_id(lab, "conntrack") == kept and "ct_new" in os.listdir(os.path.join(lab.pin_root, NET_ID[:12]))
        assert sessions.server_speaks() == [b"push", b"push", b"later"]
        assert probe_tcp(vs, vc.ip4, 8080) == "timeout"   # the policy holds
    finally:
        if sessions is not None:
            sessions.close()
        state.close()


@only("ebpf")
def test_a_tcp_flow_moves_with_its_first_answer_after_the_handshake(lab):
    """A SYN|ACK does not move a TCP flow (a SYN flood's half-open connections stay in
    ct_new); the server's first packet after it (its ACK of the client's data) does."""
    vc, vs = lab.add(2)
    lab.apply(f"vc->vs:tcp/{PUSH}", {vc: "vc", vs: "vs"}, intra="deny")
    with ns_socket(vs.ns, socket.AF_INET, socket.SOCK_STREAM) as server, \
            ns_socket(vc.ns, socket.AF_INET, socket.SOCK_STREAM) as client:
        server.settimeout(WAIT)
        client.settimeout(WAIT)
        server.bind((vs.ip4, PUSH))
        server.listen(1)
        client.connect((vs.ip4, PUSH))
        conn, _ = server.accept()
        with conn:
            flow = set(_flow(client.getsockname(), (vs.ip4, PUSH), socket.IPPROTO_TCP))
            assert flow <= set(_table(lab, "ct_new"))             # handshake done, nothing said
            assert not flow & set(_table(lab, "conntrack"))
            client.send(b"hello")
            assert conn.recv(64) == b"hello"
            deadline = time.monotonic() + WAIT                     # the server's (delayed) ACK
            while not flow <= set(_table(lab, "conntrack")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert flow <= set(_table(lab, "conntrack"))
            assert not flow & set(_table(lab, "ct_new"))
