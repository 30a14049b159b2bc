"""nftwatch: decoding the kernel's nftables notifications (datagrams recorded
from the kernel, tests/unit/data/nft_events.json), delivery to subscribers,
reopening a failed socket, and the debouncer."""
from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from plugin.kernel import nftevents, nftsocket, nftwatch
from plugin.kernel.debounced import Debouncer
from plugin.kernel.nftevents import RESYNC, NftEvent, parse
from plugin.kernel.nftwatch import NftWatcher

RECORDED = json.loads((Path(__file__).parent / "data" / "nft_events.json").read_text())["steps"]


def events_of(step: int) -> list:
    return [e for gram in RECORDED[step]["datagrams"] for e in parse(bytes.fromhex(gram))]


def changes(events) -> list:
    return [e for e in events if e.object != "generation"]


def test_iptables_new_chain():
    assert NftEvent("add", "chain", "ip", "filter", "DOCKER-USER") in events_of(0)


def test_iptables_append_is_a_rule_in_docker_user():
    assert changes(events_of(1)) == [NftEvent("add", "rule", "ip", "filter", "DOCKER-USER")]


def test_iptables_flush_is_a_rule_deletion_in_docker_user():
    assert changes(events_of(2)) == [NftEvent("delete", "rule", "ip", "filter", "DOCKER-USER")]


def test_every_transaction_ends_with_a_generation():
    for step in range(len(RECORDED)):
        assert events_of(step)[-1] == NftEvent("add", "generation")


def test_a_generation_names_the_thread_that_committed_it():
    assert [e.pid for e in events_of(0) if e.object == "generation"] == [1417]   # iptables -N, recorded
    assert [e.pid for e in events_of(3) if e.object == "generation"] == [1434, 1435, 1436]


def _own_threads_watcher():
    watcher, got = NftWatcher(opener=PairOpener()), []
    watcher.subscribe(got.append)
    watcher._own_threads = True   # noqa: SLF001 (as ignore_own_threads in the initial pid namespace)
    return watcher, got


def test_own_threads_are_told_apart_only_in_the_initial_pid_namespace(monkeypatch):
    monkeypatch.setattr(nftwatch, "in_initial_pid_namespace", lambda: False)
    assert NftWatcher(opener=PairOpener()).ignore_own_threads() is False
    monkeypatch.setattr(nftwatch, "in_initial_pid_namespace", lambda: True)
    assert NftWatcher(opener=PairOpener()).ignore_own_threads() is True



def test_a_transaction_committed_by_a_thread_of_this_process_is_not_delivered():
    watcher, got = _own_threads_watcher()
    rule = NftEvent("add", "rule", "inet", "secnet_x", "forward")
    for event in (rule, NftEvent("add", "generation", pid=threading.get_native_id())):
        watcher._take(event)   # noqa: SLF001
    assert got == []


def test_anothers_transaction_is_delivered_whole_at_its_generation():
    watcher, got = _own_threads_watcher()
    rule = NftEvent("delete", "rule", "ip", "filter", "DOCKER-USER")
    watcher._take(rule)   # noqa: SLF001
    assert got == []                                   # held until the transaction ends
    end = NftEvent("add", "generation", pid=2 ** 22 + 7)   # above pid_max's default: not ours
    watcher._take(end)   # noqa: SLF001
    assert got == [rule, end]


def test_an_unnamed_committer_is_anothers_and_a_huge_transaction_is_one_resync(monkeypatch):
    monkeypatch.setattr(nftwatch, "PENDING_MAX", 3)
    watcher, got = _own_threads_watcher()
    for i in range(5):
        watcher._take(NftEvent("add", "element", "inet", "t", name=f"s{i}"))   # noqa: SLF001
    watcher._take(NftEvent("add", "generation"))   # noqa: SLF001  (no pid attribute)
    assert got == [RESYNC, NftEvent("add", "generation")]


def test_a_resync_drops_what_was_held():
    watcher, got = _own_threads_watcher()
    watcher._take(NftEvent("add", "rule", "inet", "t", "c"))   # noqa: SLF001
    watcher._take(RESYNC)   # noqa: SLF001
    watcher._take(NftEvent("add", "generation", pid=threading.get_native_id()))   # noqa: SLF001
    assert got == [RESYNC]


def test_without_ignore_own_threads_every_event_goes_at_once():
    watcher, got = NftWatcher(opener=PairOpener()), []
    watcher.subscribe(got.append)
    rule = NftEvent("add", "rule", "inet", "t", "c")
    watcher._take(rule)   # noqa: SLF001
    assert got == [rule]


def test_nft_table_set_element():
    assert changes(events_of(3)) == [
        NftEvent("add", "table", "inet", "t"),
        NftEvent("add", "set", "inet", "t", name="s"),
        NftEvent("add", "element", "inet", "t", name="s"),
    ]


def test_nft_delete_table_takes_its_set():
    assert changes(events_of(4)) == [NftEvent("delete", "set", "inet", "t", name="s"),
                                      NftEvent("delete", "table", "inet", "t")]


def _message(mtype: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, mtype, 0, 0, 0) + payload + b"\0" * (-length % 4)


def test_other_subsystems_and_unknown_types_are_skipped():
    conntrack = _message((1 << 8) | 0, b"\x02\x00\x00\x00")      # NFNL_SUBSYS_CTNETLINK
    unknown = _message((10 << 8) | 0x30, b"\x02\x00\x00\x00")   # not an NFT_MSG_* we know
    assert list(parse(conntrack + unknown)) == []


def test_truncated_datagram_ends_cleanly():
    gram = bytes.fromhex(RECORDED[1]["datagrams"][0])
    assert list(parse(gram[:-7])) == []
    assert list(parse(b"")) == [] and list(parse(b"\x00" * 8)) == []


# --- the watcher thread --------------------------------------------------------

class PairOpener:
    """Hands out one end of a socketpair per open; the test writes datagrams
    into the other end, or closes it to make the watcher reopen."""

    def __init__(self, fail_first=0):
        self.peers, self.opens, self.fail_first = [], 0, fail_first

    def __call__(self):
        self.opens += 1
        if self.opens <= self.fail_first:
            raise OSError(errno.EPERM, "not permitted")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.peers.append(theirs)
        return ours


def wait_for(pred, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_watcher_delivers_matching_events_only():
    opener = PairOpener()
    watcher = NftWatcher(opener=opener)
    got, all_events = [], []
    watcher.subscribe(got.append, lambda e: e.chain == "DOCKER-USER")
    watcher.subscribe(all_events.append)
    watcher.start()
    try:
        for gram in RECORDED[2]["datagrams"]:
            opener.peers[0].send(bytes.fromhex(gram))
        assert wait_for(lambda: len(all_events) == 2)
        assert got == [NftEvent("delete", "rule", "ip", "filter", "DOCKER-USER")]
    finally:
        watcher.stop()
    assert not watcher.running


def test_a_failing_subscriber_does_not_stop_the_others():
    watcher, got = NftWatcher(opener=PairOpener()), []
    watcher.subscribe(lambda e: 1 / 0)
    watcher.subscribe(got.append)
    watcher.deliver(RESYNC)
    assert got == [RESYNC]


def test_watcher_reopens_a_broken_socket_and_resyncs():
    opener = PairOpener()
    watcher, got = NftWatcher(opener=opener, sleep=lambda s: None), []
    watcher.subscribe(got.append)

    class Broken:
        def __init__(self, sock):
            self.sock = sock

        def fileno(self):
            return self.sock.fileno()

        def recv(self, n):
            raise OSError(errno.EBADF, "gone")

        def close(self):
            self.sock.close()

    handed = []

    def open_once_broken():
        handed.append(1)
        return Broken(opener()) if len(handed) == 1 else opener()

    watcher._opener = open_once_broken
    watcher.start()
    try:
        opener.peers[0].send(b"x")  # wakes select; recv fails -> reopen
        assert wait_for(lambda: RESYNC in got)
        assert watcher.restarts == 1
        opener.peers[-1].send(bytes.fromhex(RECORDED[1]["datagrams"][0]))
        assert wait_for(lambda: any(e.object == "rule" for e in got))
    finally:
        watcher.stop()


def test_enobufs_means_resync(monkeypatch):
    opener = PairOpener()
    watcher, got = NftWatcher(opener=opener), []
    watcher.subscribe(got.append)
    calls = {"n": 0}

    def pump():
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        watcher._stop.wait()

    monkeypatch.setattr(watcher, "_pump", pump)
    watcher.start()
    try:
        assert wait_for(lambda: got == [RESYNC])
        assert watcher.restarts == 0
    finally:
        watcher.stop()


class MemberSocket:
    """A watcher socket that records group membership changes (setsockopt) and can
    refuse to join again."""

    def __init__(self, sock, refuse_join=False):
        self.sock, self.refuse_join, self.calls = sock, refuse_join, []

    def fileno(self):
        return self.sock.fileno()

    def recv(self, n):
        return self.sock.recv(n)

    def setsockopt(self, level, option, value):
        self.calls.append((level, option, value))
        if option == 1 and self.refuse_join:
            raise OSError(errno.ENOMEM, "no memory")

    def close(self):
        self.sock.close()


def test_pause_leaves_the_group_once_and_the_last_resume_joins_it():
    opener = PairOpener()
    wrapped = []
    watcher = NftWatcher(opener=lambda: wrapped.append(MemberSocket(opener())) or wrapped[-1])
    watcher.start()
    try:
        sock = wrapped[0]
        watcher.pause()
        watcher.pause()          # a second writer inside the window
        assert sock.calls == [(270, 2, 7)]     # SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, NFNLGRP_NFTABLES
        watcher.resume()
        assert sock.calls == [(270, 2, 7)]
        watcher.resume()
        assert sock.calls == [(270, 2, 7), (270, 1, 7)]
        assert watcher.pauses == 2
    finally:
        watcher.stop()


def test_a_watcher_that_cannot_rejoin_reopens_and_resyncs():
    opener = PairOpener()
    wrapped = []

    def open_refusing_first():
        wrapped.append(MemberSocket(opener(), refuse_join=not wrapped))
        return wrapped[-1]

    watcher, got = NftWatcher(opener=open_refusing_first, sleep=lambda s: None), []
    watcher.subscribe(got.append)
    watcher.start()
    try:
        watcher.pause()
        watcher.resume()
        assert wait_for(lambda: RESYNC in got and len(wrapped) == 2)
        assert watcher.restarts == 1
    finally:
        watcher.stop()


def test_lost_is_one_resync():
    watcher, got = NftWatcher(opener=PairOpener()), []
    watcher.subscribe(got.append)
    watcher.lost()
    assert got == [RESYNC]


def test_start_raises_when_the_socket_cannot_open():
    with pytest.raises(OSError):
        NftWatcher(opener=PairOpener(fail_first=1)).start()


def test_idle_watcher_thread_uses_no_cpu():
    watcher = NftWatcher(opener=PairOpener()).start()
    try:
        before = time.thread_time()  # this thread; the watcher's cost shows in process time
        p0 = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - p0 - (time.thread_time() - before) < 0.02
    finally:
        watcher.stop()


# --- the debouncer -------------------------------------------------------------

def test_debouncer_folds_a_burst_into_one_run():
    runs = []
    deb = Debouncer(lambda: runs.append(time.monotonic()), delay=0.05).start()
    try:
        start = time.monotonic()
        for _ in range(50):
            deb.trigger()
        assert wait_for(lambda: deb.runs == 1)
        time.sleep(0.15)
        assert deb.runs == 1 and runs[0] - start >= 0.05
    finally:
        deb.stop()


def test_debouncer_trigger_during_a_run_runs_again():
    started, release = threading.Event(), threading.Event()

    def action():
        started.set()
        release.wait(2)

    deb = Debouncer(action, delay=0.0).start()
    try:
        deb.trigger()
        assert started.wait(2)
        deb.trigger()
        release.set()
        assert wait_for(lambda: deb.runs == 2)
    finally:
        deb.stop()


def test_debouncer_runs_periodically_without_triggers_and_survives_errors():
    calls = []

    def action():
        calls.append(1)
        raise RuntimeError("boom")

    deb = Debouncer(action, delay=0.0, every=0.05).start()
    try:
        assert wait_for(lambda: deb.runs >= 2)
    finally:
        deb.stop()


def test_real_socket_needs_the_kernel():
    if os.geteuid() != 0:
        pytest.skip("joining NFNLGRP_NFTABLES needs CAP_NET_ADMIN")
    sock = nftsocket.open_socket()
    sock.close()


def _from_port(portid: int) -> bytes:
    """A datagram of one NEWGEN message sent by netlink port ``portid``."""
    payload = b"\x00\x00\x00\x00"
    return struct.pack("=IHHII", 16 + len(payload), (10 << 8) | 15, 0, 0, portid) + payload


def test_the_port_filter_drops_datagrams_of_ignored_ports_in_the_kernel():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        nftsocket.attach_port_filter(ours, [0x01020304, 77])
        ours.setblocking(False)
        for portid in (0x01020304, 77, 0x04030201, 5):
            theirs.send(_from_port(portid))
        got = []
        while True:
            try:
                got.append(nftevents.first_portid(ours.recv(4096)))
            except BlockingIOError:
                break
        assert got == [0x04030201, 5]
    finally:
        ours.close()
        theirs.close()


def test_ignored_ports_reach_no_subscriber():
    opener = PairOpener()
    watcher, got = NftWatcher(opener=opener), []
    watcher.subscribe(got.append)
    watcher.start()
    try:
        watcher.ignore_port(41)
        opener.peers[0].send(_from_port(41))
        opener.peers[0].send(_from_port(42))
        assert wait_for(lambda: got)
        time.sleep(0.1)
        assert [e.portid for e in got] == [42]
    finally:
        watcher.stop()
