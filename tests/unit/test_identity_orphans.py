"""Identity rows never outlive their network (issue 12): a failed create leaves none, and
rows a crash left behind (a network row never written) are swept when the store opens."""
from __future__ import annotations

import json
import sqlite3

from driver_fakes import FakeFirewall, FakeLinks, create_network_body, new_id
from plugin.daemon.app import create_app
from plugin.driver.driver import Driver
from plugin.driver.state import NetworkRecord, State
from plugin.enforce.reconciler import Reconciler
from test_reconciler_unit import RecordingBackend


class Backend(RecordingBackend):
    def check_host(self):
        pass


def _rows(path, table: str) -> list:
    with sqlite3.connect(path) as db:
        return sorted(db.execute(f"SELECT network_id FROM {table}"))   # noqa: S608 (fixed names)


def test_a_create_that_fails_after_its_identities_were_allocated_leaves_no_row(tmp_path):
    state = State(str(tmp_path / "state"))
    fw = FakeFirewall()
    fw.fail["ensure"] = OSError("iptables: resource busy")   # beside the tables: after the allocation
    driver = Driver(state, FakeLinks(), fw, Reconciler(state, {"nftables": Backend()}))
    nid = new_id()
    resp = create_app(driver).test_client().post("/NetworkDriver.CreateNetwork",
                                                 data=json.dumps(create_network_body(nid)))
    assert resp.status_code == 500 and state.get_network(nid) is None
    assert state.identities(nid) == {}
    assert _rows(state.path, "identities") == []
    state.close()


def test_rows_of_a_network_without_its_row_are_swept_when_the_store_opens(tmp_path, caplog):
    state = State(str(tmp_path / "state"))
    kept, gone = "ab" * 32, "cd" * 32
    state.put_network(NetworkRecord(id=kept, bridge="sn-kept", mtu=1500, options={}))
    state.allocate(kept, ["default", "web"])
    state.allocate(gone, ["default", "api"])         # a crash before its network row was written
    with sqlite3.connect(state.path) as db:
        db.execute("INSERT INTO rule_edits (network_id, doc) VALUES (?, ?)", (gone, '{"add": []}'))
    state.close()
    caplog.set_level("WARNING")
    again = State(str(tmp_path / "state"))
    assert again.identities(gone) == {} and again.identities(kept) == {"default": 256, "web": 257}
    assert _rows(again.path, "identities") == [(kept,), (kept,)]
    assert _rows(again.path, "rule_edits") == []
    assert any(gone[:12] in r.getMessage() for r in caplog.records)
    assert again.allocate(gone, ["x"]) == {"x": 256}   # nothing of the old rows is handed out
    again.close()


def test_an_idle_segments_identity_is_freed_by_the_pass_at_start(tmp_path):
    """A segment whose members are gone keeps its identity while a join may take it over
    (plugin.enforce.identities.idle_kept); the full pass of a restarted daemon frees it."""
    from test_reconciler_unit import endpoint, network

    state = State(str(tmp_path / "state"))
    rec = Reconciler(state, {"nftables": Backend()})
    net = network()
    state.put_network(net)
    rec.network_added(net)
    ep = endpoint(1, "old")
    state.put_endpoint(ep)
    rec.endpoint_changed(net, ep)
    rec.endpoint_removed(net, ep)
    state.delete_endpoint(ep.id)
    assert "old" in state.identities(net.id)                   # idle: kept
    state.close()
    again = State(str(tmp_path / "state"))
    Reconciler(again, {"nftables": Backend()}).reconcile(full=True)
    assert set(again.identities(net.id)) == {"api", "default", "web"}
    assert ("old",) not in _segments(again.path)
    again.close()


def _segments(path) -> list:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT segment FROM identities"))
