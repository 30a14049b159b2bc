"""The drop log: entries from backends' drop events, the ring's and the files' bounds, restarts."""
from __future__ import annotations

import json
import os

import pytest

from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.backend import DropEvent
from plugin.observe import droplog as dl

NID = "ab" * 32


def ep(eid, name, segment, ip, quarantine=None, veth="snvx"):
    return EndpointRecord(id=eid * 64, network_id=NID, veth_host=veth, veth_peer="snpx",
                          mac="02:00:00:00:00:01", ipv4=f"{ip}/24", segment=segment,
                          quarantine=quarantine, container=name)


@pytest.fixture
def state(tmp_path):
    st = State(str(tmp_path / "state"))
    st.put_network(NetworkRecord(id=NID, bridge="sn-x", mtu=1500, options={}))
    st.put_endpoints([ep("1", "web1", "web", "10.224.0.2"), ep("2", "db1", "db", "10.224.0.3"),
                      ep("3", "bad1", None, "10.224.0.4", quarantine="label secnet.segment is empty")])
    yield st
    st.close()


def packet(reason: str, src: str, dst: str, dport: int = 5432, nid: str = NID, time=0.0) -> DropEvent:
    return DropEvent(network=nid[:12], reason=reason, family=4, proto="tcp", src=src, dst=dst,
                     port=dport, sport=40000, time=time)


def test_an_entry_names_containers_segments_and_the_reason(tmp_path, state):
    log = dl.DropLog(str(tmp_path), dl.Directory(state))
    e = log.record(packet("no-rule", "10.224.0.2", "10.224.0.3", time=1700000000.5))
    assert e["network"] == NID and e["reason"] == "no-rule" and e["why"] == "no rule allows it"
    assert e["src"] == {"address": "10.224.0.2", "container": "web1", "segment": "web", "state": None,
                        "outside": False, "endpoint": e["src"]["endpoint"]}
    assert state.get_endpoint(e["src"]["endpoint"]).container == "web1"
    assert e["dst"]["container"] == "db1" and e["dst"]["segment"] == "db"
    assert (e["proto"], e["dport"], e["time"], e["seq"]) == ("tcp", 5432, 1700000000.5, 1)


def test_outside_and_quarantined(tmp_path, state):
    log = dl.DropLog(str(tmp_path), dl.Directory(state))
    out = log.record(packet("egress", "10.224.0.2", "192.0.2.7", 443, time=1.0))
    assert out["dst"] == {"address": "192.0.2.7", "container": None, "segment": None,
                          "multicast": False, "outside": True}
    assert out["why"] == "egress denied"
    q = log.record(packet("quarantined", "10.224.0.4", "10.224.0.3", time=2.0))
    assert q["why"] == "quarantined: label secnet.segment is empty"
    assert q["src"]["container"] == "bad1" and q["src"]["state"] == "quarantined"
    audit = log.record(DropEvent(network=NID, reason="no-rule", family=4, proto="tcp", src="10.224.0.2",
                                 dst="10.224.0.3", port=5432, audit=True))
    assert audit["audit"] is True and audit["why"] == "no rule allows it"
    assert len(log.ring) == 3 and log.stats()["received"] == 3


def test_a_new_member_is_found_without_waiting(tmp_path, state):
    directory = dl.Directory(state, max_age=60, miss_age=0)
    log = dl.DropLog(str(tmp_path), directory)
    assert log.record(packet("no-rule", "10.224.0.2", "10.224.0.9"))["dst"]["outside"]
    state.put_endpoint(ep("9", "new1", "db", "10.224.0.9"))
    assert log.record(packet("no-rule", "10.224.0.2", "10.224.0.9"))["dst"]["container"] == "new1"


def test_a_reused_address_names_its_new_container_at_once(tmp_path, state):
    """U16-F1: the previous incarnation at a reused address was named for up to max_age."""
    log = dl.DropLog(str(tmp_path), dl.Directory(state, max_age=60, miss_age=60))
    assert log.record(packet("no-rule", "10.224.0.2", "10.224.0.3"))["dst"]["container"] == "db1"
    state.delete_endpoint("2" * 64)
    state.put_endpoint(ep("7", "web7", "web", "10.224.0.3"))
    dst = log.record(packet("no-rule", "10.224.0.2", "10.224.0.3"))["dst"]
    assert (dst["container"], dst["segment"], dst["endpoint"]) == ("web7", "web", "7" * 64)
    state.delete_endpoint("7" * 64)
    assert log.record(packet("no-rule", "10.224.0.2", "10.224.0.3"))["dst"]["container"] is None


def test_the_ring_is_bounded_and_queries_go_by_cursor_and_network(tmp_path):
    log = dl.DropLog(str(tmp_path), capacity=100)
    for i in range(250):
        log.append({"time": i, "network": "n1" if i % 2 else "n2", "i": i})
    assert len(log.ring) == 100 and log.seq == 250
    everything = log.query()
    assert [e["i"] for e in everything["entries"]] == list(range(150, 250))   # oldest first
    assert everything["cursor"] == 250
    assert [e["i"] for e in log.query(since=245)["entries"]] == [245, 246, 247, 248, 249]
    assert {e["network"] for e in log.query("n1")["entries"]} == {"n1"}
    assert len(log.query(limit=3)["entries"]) == 3 and log.query(since=250)["entries"] == []


def test_the_files_rotate_and_stay_bounded(tmp_path):
    log = dl.DropLog(str(tmp_path), capacity=10_000, max_bytes=20_000)
    for i in range(2_000):
        log.append({"time": i, "network": NID, "pad": "x" * 50})
    log.close()
    current, previous = tmp_path / dl.FILE_NAME, tmp_path / (dl.FILE_NAME + ".1")
    assert current.stat().st_size <= 20_000 and previous.stat().st_size <= 20_000
    assert sorted(os.listdir(tmp_path)) == [dl.FILE_NAME, dl.FILE_NAME + ".1"]
    lines = previous.read_text().splitlines() + current.read_text().splitlines()
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(seqs[0], 2_001))                    # the newest, in order


def test_a_restart_refills_the_ring_and_continues_the_sequence(tmp_path):
    log = dl.DropLog(str(tmp_path), capacity=50, max_bytes=4_000)
    for i in range(120):
        log.append({"time": i, "network": NID})
    log.close()
    with open(tmp_path / dl.FILE_NAME, "a") as f:
        f.write('{"seq": 999, "torn')                              # a crash mid-line
    again = dl.DropLog(str(tmp_path), capacity=50, max_bytes=4_000)
    assert again.seq == 120 and again.ring.last()[0] == 120
    assert again.append({"time": 0, "network": NID})["seq"] == 121
    assert [e["seq"] for e in again.query(since=118)["entries"]] == [119, 120, 121]


def test_an_unwritable_directory_keeps_the_log_in_memory(tmp_path):
    target = tmp_path / "gone"
    log = dl.DropLog(str(target), capacity=10)                   # the directory does not exist
    log.append({"time": 1, "network": NID})
    assert len(log.ring) == 1 and log.query()["entries"][0]["seq"] == 1


def test_memory_per_entry_is_a_few_hundred_bytes(tmp_path, state):
    log = dl.DropLog(str(tmp_path), dl.Directory(state), capacity=1000)
    for i in range(1000):
        log.record(packet("no-rule", "10.224.0.2", "10.224.0.3", dport=1000 + i, time=float(i)))
    stats = log.stats()
    assert stats["entries"] == 1000 and stats["bytes"] / 1000 < 600, stats


def test_entries_show_the_current_names_of_their_containers(tmp_path, state):
    log = dl.DropLog(str(tmp_path), dl.Directory(state))
    e = log.record(packet("no-rule", "10.224.0.2", "10.224.0.3", time=1.0))
    renamed = state.get_endpoint(e["src"]["endpoint"]).evolve(container="web9")
    state.put_endpoint(renamed)
    entries = dl.current_names(log.query()["entries"], state.endpoints())
    assert entries[0]["src"]["container"] == "web9" and entries[0]["dst"]["container"] == "db1"
