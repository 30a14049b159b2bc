"""tcwatch: decoding the kernel's tc notifications (datagrams recorded from the
kernel, tests/unit/data/tc_events.json), which of them call for a hook check, the
set of devices a check takes, and delivery through the watcher's thread."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from plugin.kernel.tcwatch import (CLSACT_EGRESS, CLSACT_INGRESS, RESYNC, Links, TcEvent, TcWatcher,
                                   hook_change, parse)

RECORDED = json.loads((Path(__file__).parent / "data" / "tc_events.json").read_text())["steps"]
V0 = 3   # the recording's device


def events_of(step: int) -> list:
    return [e for gram in RECORDED[step]["datagrams"] for e in parse(bytes.fromhex(gram))]


def test_a_new_clsact_qdisc_is_announced_but_wants_no_check():
    (event,) = events_of(0)
    assert (event.kind, event.object, event.ifindex, event.tc_kind) == ("add", "qdisc", V0, "clsact")
    assert not hook_change(event)


def test_a_filter_at_pref_1_handle_1_on_ingress():
    filters = [e for e in events_of(1) if e.object == "filter"]
    assert filters == [TcEvent("add", "filter", V0, CLSACT_INGRESS, 1, 1, 3, "bpf")]   # protocol all
    assert hook_change(filters[0])
    assert filters[0].portid != 0   # tc's own socket


def test_a_second_filter_at_our_priority_is_a_hook_change():
    (event,) = events_of(2)
    assert (event.handle, event.prio, event.parent) == (2, 1, CLSACT_INGRESS)
    assert hook_change(event)


def test_a_filter_on_egress_names_the_egress_hook():
    filters = [e for e in events_of(3) if e.object == "filter"]
    assert [(e.parent, e.prio) for e in filters] == [(CLSACT_EGRESS, 3)]


def test_a_flush_of_the_ingress_filters_is_a_deletion_that_wants_a_check():
    got = events_of(4)
    assert [(e.kind, e.object) for e in got] == [("delete", "filter"), ("delete", "chain")]
    assert all(hook_change(e) for e in got)


def test_deleting_clsact_is_one_qdisc_deletion_and_no_filter_message():
    got = events_of(5)
    assert [(e.kind, e.object, e.tc_kind) for e in got] == [("delete", "qdisc", "clsact"), ("delete", "chain", "")]
    assert hook_change(got[0])


def test_other_messages_and_truncated_ones_are_skipped():
    gram = bytes.fromhex(RECORDED[2]["datagrams"][0])
    other = bytearray(gram)
    other[4:6] = (16).to_bytes(2, "little")   # RTM_NEWLINK: not a tc message
    assert list(parse(bytes(other))) == []
    assert list(parse(gram[:-8])) == []        # the message claims more than the datagram has
    assert list(parse(b"")) == []


def test_a_filter_on_another_parent_wants_no_check():
    assert not hook_change(TcEvent("add", "filter", V0, 0x10000, 1, 1, 3, "u32"))
    assert hook_change(RESYNC)


def test_links_collects_devices_until_taken_and_resync_means_all():
    links = Links()
    links.add(TcEvent("delete", "filter", 7))
    links.add(TcEvent("delete", "qdisc", 9))
    assert links.take() == {7, 9}
    assert links.take() == set()
    links.add(TcEvent("delete", "filter", 7))
    links.add(RESYNC)
    links.add(TcEvent("delete", "filter", 8))
    assert links.take() is None
    assert links.take() == set()


def test_the_watcher_delivers_parsed_events_from_its_socket():
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    got = []
    watcher = TcWatcher(opener=lambda: ours)
    watcher.subscribe(got.append, hook_change)
    watcher.start()
    try:
        for gram in RECORDED[5]["datagrams"]:
            kernel.send(bytes.fromhex(gram))
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(e.kind, e.object) for e in got] == [("delete", "qdisc"), ("delete", "chain")]
        assert watcher.name == "secnet-tcwatch" and watcher.running
    finally:
        watcher.stop()
        kernel.close()
