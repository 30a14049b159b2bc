"""linkwatch and portwatch's matching: decoding the kernel's link notifications
(datagrams recorded from Linux 6.18, tests/unit/data/link_events.json), which of them
call for a port check, and the set of veth names a check takes."""
from __future__ import annotations

import json
from pathlib import Path

from plugin.driver.portwatch import Names, port_event
from plugin.kernel.linkwatch import RESYNC, LinkEvent, parse

RECORDED = json.loads((Path(__file__).parent / "data" / "link_events.json").read_text())["steps"]


def events_of(step: int) -> list:
    return [e for gram in RECORDED[step]["datagrams"] for e in parse(bytes.fromhex(gram))]


def test_a_new_bridge_is_one_announcement_without_a_master():
    (event,) = events_of(0)
    assert (event.kind, event.ifname, event.master) == ("add", "sn-x", 0)
    assert not port_event(event)


def test_a_veth_made_then_enslaved_is_first_announced_without_its_master():
    got = [(e.kind, e.ifname, e.master) for e in events_of(1) if e.ifname == "snvabc"]
    assert [e.group for e in events_of(1)] == [0] * len(events_of(1))   # (ip made it in group 0)
    bridge = events_of(0)[0].ifindex
    assert got[0] == ("add", "snvabc", 0)
    assert ("add", "snvabc", bridge) in got
    assert all(port_event(e) for e in events_of(1) if e.ifname == "snvabc")
    assert not any(port_event(e) for e in events_of(1) if e.ifname in ("snpabc", "sn-x"))


def test_nomaster_ends_with_the_veth_announced_without_a_master():
    # the bridge's own port announcements (AF_BRIDGE: a DELLINK here, and NEWLINKs with the
    # master but no group) are skipped: a port's group would read 0 in them
    assert all(e.kind == "add" for e in events_of(2))
    adds = [e for e in events_of(2) if e.ifname == "snvabc" and e.kind == "add"]
    assert adds[-1].master == 0
    assert port_event(adds[-1])


def test_a_deleted_veth_calls_for_no_check():
    got = events_of(3)
    assert {(e.kind, e.ifname) for e in got} == {("delete", "snvabc"), ("delete", "snpabc")}
    assert not any(port_event(e) for e in got)


def test_a_truncated_datagram_yields_what_came_before_the_cut():
    gram = bytes.fromhex(RECORDED[1]["datagrams"][0])
    assert list(parse(gram[:-8])) == []
    assert len(list(parse(gram))) == 1


def test_names_collects_until_taken_and_resync_means_all():
    names = Names()
    names.add(LinkEvent("add", 5, "snv1"))
    names.add(LinkEvent("add", 6, "snv2"))
    names.add(LinkEvent("add", 5, "snv1", master=2, group=7))
    assert names.take() == {"snv1": LinkEvent("add", 5, "snv1", 2, 7), "snv2": LinkEvent("add", 6, "snv2")}
    assert names.take() == {}
    names.add(LinkEvent("add", 5, "snv1"))
    names.add(RESYNC)
    names.add(LinkEvent("add", 6, "snv2"))
    assert names.take() is None
    assert names.take() == {}
    assert port_event(RESYNC)
