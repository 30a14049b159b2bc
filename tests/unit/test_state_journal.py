"""plugin.driver.state: one-rule edits journaled (rule_edits), replayed when the store opens."""
from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import replace

from hypothesis import given, settings, strategies as st

from driver_fakes import new_id
from plugin.driver.state import JOURNAL_MAX, NetworkRecord, State
from segmentation.model import Policy
from segmentation.rules import parse_rules, rule_texts

POOL = [f"s{i}->s{j}:tcp/{80 + i}" for i in range(4) for j in range(3)]


def network(rules=("web->api:tcp/8080",)) -> NetworkRecord:
    return NetworkRecord(id=new_id(), bridge="sn-x", mtu=1400, options={"rules": list(rules)},
                         ipv4=(("10.220.1.0/24", "10.220.1.1/24"),))


def edited(state: State, nid: str, action: str, texts) -> NetworkRecord:
    """What Driver.change_options does for ``policy add|remove|set``: the new record
    and its RuleEdit handed to put_network."""
    old = state.get_network(nid)
    rules = parse_rules(" ".join(texts))
    if action == "set":
        new, edit = old.evolve(options=replace(old.options, rules=rules)), None
    else:
        policy, edit = getattr(Policy(old.options), f"{action}_rules")(rules)
        new = old.evolve(options=policy.options)
    state.put_network(new, edit)
    return new


def rows(path: str, sql: str) -> list:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def saved_rules(state: State, nid: str) -> list:
    (doc,), = rows(state.path, f"SELECT doc FROM networks WHERE id='{nid}'")
    return json.loads(doc)["options"]["rules"]


def test_an_add_writes_one_journal_row_not_the_document(tmp_path):
    state = State(str(tmp_path))
    try:
        net = network()
        state.put_network(net)
        new = edited(state, net.id, "add", ["a->b:tcp/1"])
        assert saved_rules(state, net.id) == ["web->api:tcp/8080"]
        assert [json.loads(d) for d, in rows(state.path, "SELECT doc FROM rule_edits")] == [
            {"add": ["a->b:tcp/1"]}]
        assert State(str(tmp_path)).get_network(net.id) == new   # a second reader, the first not closed
    finally:
        state.close()
    assert rows(state.path, "SELECT * FROM rule_edits") == []     # close() wrote it whole
    assert saved_rules(state, net.id) == ["web->api:tcp/8080", "a->b:tcp/1"]


def test_the_journal_is_written_whole_after_journal_max_edits(tmp_path):
    state = State(str(tmp_path))
    try:
        net = network()
        state.put_network(net)
        for k in range(JOURNAL_MAX):
            edited(state, net.id, "add", [f"a->b:tcp/{k + 1}"])
        assert len(rows(state.path, "SELECT * FROM rule_edits")) == JOURNAL_MAX
        last = edited(state, net.id, "remove", ["a->b:tcp/1"])
        assert rows(state.path, "SELECT * FROM rule_edits") == []
        assert saved_rules(state, net.id) == rule_texts(last.options.rules)
    finally:
        state.close()


def test_an_edit_with_another_change_and_a_set_are_written_whole(tmp_path):
    state = State(str(tmp_path))
    try:
        net = network()
        state.put_network(net)
        old = state.get_network(net.id)
        policy, edit = Policy(old.options).add_rules(parse_rules("a->b:tcp/1"))
        state.put_network(old.evolve(options=replace(policy.options, mode="audit")), edit)
        assert rows(state.path, "SELECT * FROM rule_edits") == []
        assert json.loads(rows(state.path, "SELECT doc FROM networks")[0][0])["options"]["mode"] == "audit"
        edited(state, net.id, "set", ["x->y:udp/53"])
        assert saved_rules(state, net.id) == ["x->y:udp/53"]
    finally:
        state.close()


def test_deleting_a_network_deletes_its_journal(tmp_path):
    state = State(str(tmp_path))
    try:
        keep, gone = network(), network()
        state.put_network(keep)
        state.put_network(gone)
        edited(state, keep.id, "add", ["a->b:tcp/1"])
        edited(state, gone.id, "add", ["a->b:tcp/2"])
        state.delete_network(gone.id)
        assert [n for n, in rows(state.path, "SELECT network_id FROM rule_edits")] == [keep.id]
        assert [n.id for n in State(str(tmp_path)).networks()] == [keep.id]
    finally:
        state.close()


def test_a_document_of_an_older_daemon_with_rules_as_one_string_takes_the_journal(tmp_path):
    state = State(str(tmp_path))
    try:
        net = network()
        doc = json.loads(net.to_json())
        doc["options"]["rules"] = "web->api:tcp/8080, a->b:tcp/1"
        state._db.execute("INSERT INTO networks VALUES (?, ?)", (net.id, json.dumps(doc)))
        state._db.execute("INSERT INTO rule_edits (network_id, doc) VALUES (?, ?)",
                          (net.id, json.dumps({"remove": ["a->b:tcp/1"]})))
        assert rule_texts(State(str(tmp_path)).get_network(net.id).options.rules) == ["web->api:tcp/8080"]
    finally:
        state.close()


EDITS = st.lists(st.tuples(st.sampled_from(["add", "remove", "set"]),
                           st.lists(st.sampled_from(POOL), min_size=1, max_size=4, unique=True)),
                 max_size=2 * JOURNAL_MAX + 5)


@settings(max_examples=40, deadline=None)
@given(EDITS)
def test_reopening_after_any_edits_gives_the_records_in_memory(edits):
    """A store opened after any series of add/remove/set (the first not closed, as after
    kill -9) holds what the first held in memory; so does one opened after close()."""
    with tempfile.TemporaryDirectory() as tmp:
        state = State(tmp)
        try:
            net = network(POOL[:3])
            state.put_network(net)
            for action, texts in edits:
                present = set(rule_texts(state.get_network(net.id).options.rules))
                if action == "remove":
                    texts = [t for t in texts if t in present]
                    if not texts:
                        continue
                edited(state, net.id, action, texts)
            assert State(tmp).networks() == state.networks()
        finally:
            state.close()
        reopened = State(tmp)
        try:
            assert reopened.networks() == state.networks()
            assert rows(reopened.path, "SELECT * FROM rule_edits") == []
        finally:
            reopened.close()


def test_a_failed_whole_write_leaves_the_journal_and_the_next_write_whole(tmp_path, monkeypatch):
    state = State(str(tmp_path))
    try:
        net = network()
        state.put_network(net)
        edited(state, net.id, "add", ["a->b:tcp/1"])
        moded = state.get_network(net.id)
        moded = moded.evolve(options=replace(moded.options, mode="audit"))
        monkeypatch.setattr(NetworkRecord, "to_json", lambda self: 1 / 0)
        try:
            state.put_network(moded)
        except ZeroDivisionError:
            pass
        monkeypatch.undo()
        assert not state._db.in_transaction   # noqa: SLF001
        assert len(rows(state.path, "SELECT * FROM rule_edits")) == 1
        assert State(str(tmp_path)).get_network(net.id).options.rules == state.get_network(net.id).options.rules
        last = edited(state, net.id, "add", ["a->b:tcp/2"])   # written whole: its journal was not emptied
        assert rows(state.path, "SELECT * FROM rule_edits") == []
        assert saved_rules(state, net.id) == rule_texts(last.options.rules)
    finally:
        state.close()
