"""One-port entries applied in bulk (plugin.enforce.nftables.portgroups) against the
entry-by-entry path of PolicyElements: same elements, same delta."""
from __future__ import annotations

from plugin.enforce.nftables import portgroups
from plugin.enforce.nftables.elements import PolicyElements, apply_delta
from segmentation.policymap import PolicyEntry


def _ports(rule: str, n: int, port0: int = 1000) -> frozenset:
    return frozenset(PolicyEntry(256 + i % 7, 300 + i % 11, "tcp", port0 + i, port0 + i, f"{rule}{i}")
                     for i in range(n))


def _one_by_one(monkeypatch):
    """PolicyElements with the bulk path refusing every batch (the entry-by-entry path)."""
    monkeypatch.setattr(portgroups, "remove", lambda *a: False)
    monkeypatch.setattr(portgroups, "add", lambda *a: False)


def _nonempty(sets) -> dict:
    return {name: dict(els) for name, els in sets.items() if els}


def _run(a: frozenset, b: frozenset) -> tuple:
    state = PolicyElements.of(a)
    before = _nonempty(state.flat())
    delta = state.change(b - a, a - b)
    return before, _nonempty(delta.delete), _nonempty(delta.add), _nonempty(state.flat()), \
        _nonempty(state.attribution())


def test_a_set_that_replaces_every_rule_gives_the_delta_of_one_by_one(monkeypatch):
    a, b = _ports("r", 2000), _ports("r", 2000, port0=5000)
    bulk = _run(a, b)
    _one_by_one(monkeypatch)
    assert bulk == _run(a, b)
    before, delete, add, after, _ = bulk
    assert len(delete["pol_port"]) == len(add["pol_port"]) == 2000
    assert _nonempty(apply_delta(before, PolicyElements.of(a).change(b - a, a - b))) == after


def test_a_rule_replaced_by_one_on_the_same_port_keeps_its_element(monkeypatch):
    """Removed and added in one delta, a group's element is neither deleted nor added."""
    a = _ports("r", 50)
    b = (a - {next(iter(a))}) | {next(iter(a))._replace(rule="renamed")}
    bulk = _run(a, b)
    assert not bulk[1].get("pol_port") and not bulk[2].get("pol_port")
    _one_by_one(monkeypatch)
    assert bulk == _run(a, b)


def test_a_group_with_two_rules_is_left_to_the_entry_by_entry_path():
    a = _ports("r", 20)
    twin = next(iter(a))._replace(rule="twin")
    state = PolicyElements.of(a)
    (ports, groups), _rest = portgroups.split([twin])
    snapshot = {name: dict(g) for name, g in state.groups.items()}
    assert not portgroups.add(state.groups, ports, groups, {}, {})   # its group is taken
    assert state.groups == snapshot
    delta = state.change([twin], [])
    assert not delta.add.get("pol_port") and state.groups["pol_port"][groups[0]] == {twin, next(iter(a))}
    (ports, groups), _rest = portgroups.split([twin])
    assert not portgroups.remove(state.groups, ports, groups, {})   # not its group's only entry
    assert state.groups == {name: dict(g) for name, g in state.groups.items()}


def test_split_keeps_ranges_icmp_any_and_cidrs_out():
    ranged = PolicyEntry(1, 2, "tcp", 80, 90, "x")
    icmp, anything = PolicyEntry(1, 2, "icmp", 0, 0, "i"), PolicyEntry(1, 2, "any", 0, 0, "a")
    udp = PolicyEntry(1, 2, "udp", 53, 53, "d")
    (ports, groups), rest = portgroups.split([ranged, icmp, udp, anything])
    assert ports == [udp] and groups == [(1, 2, 17, 53)] and set(rest) == {ranged, icmp, anything}


def test_a_set_that_loses_every_element_is_flushed_and_one_that_keeps_one_is_not(monkeypatch):
    """``flush`` names a set only when the delta deletes every element it holds: one kept
    element (here a rule whose group stays), or a set with intervals, and it is absent.
    The same with the entry-by-entry path."""
    a, b = _ports("r", 200), _ports("r", 200, port0=5000)
    ranged = PolicyEntry(256, 300, "tcp", 80, 90, "ranged")
    for bulk_path in (True, False):
        if not bulk_path:
            _one_by_one(monkeypatch)
        state = PolicyElements.of(a | {ranged})
        delta = state.change(b | {ranged._replace(lo=81)}, a | {ranged})
        assert delta.flush == {"pol_port"} and len(delta.delete["pol_port"]) == 200   # pol_range: cut, no flush
        kept = next(iter(b))
        delta = PolicyElements.of(a | set(list(b)[:60])).change(set(list(b)[60:]), a)   # 60 stay
        assert delta.flush == set() and not delta.kept and len(delta.delete["pol_port"]) == 200
        assert PolicyElements.of(a).change(b, ()).flush == set()   # nothing deleted
        anything = PolicyEntry(256, 300, "any", 0, 0, "anything")
        more = {PolicyEntry(256, 300 + i, "any", 0, 0, f"a{i}") for i in range(1, 9)}
        delta = PolicyElements.of(more | {anything}).change((), more)   # pol_any: counted per element
        assert delta.flush == set() and not delta.kept


def test_a_set_of_uncounted_elements_that_keeps_a_few_is_flushed_and_they_are_added_back(monkeypatch):
    """pol_port (counted in hit_port, ``elements.COUNTED_IN``): a delta that keeps at most
    one element per four deleted flushes it and adds the kept ones back (``kept``); the
    element state is the same either way."""
    a, b = _ports("r", 200), _ports("r", 200, port0=5000)
    for bulk_path in (True, False):
        if not bulk_path:
            _one_by_one(monkeypatch)
        kept = next(iter(b))
        state = PolicyElements.of(a | {kept})
        delta = state.change(b - {kept}, a)   # `kept` stays: its element too
        group = (kept.src, kept.dst, 6, kept.lo)
        assert delta.flush == {"pol_port"} and delta.kept == {"pol_port": {group: None}}
        assert len(delta.delete["pol_port"]) == 200 and group not in delta.add["pol_port"]
        assert set(state.flat()["pol_port"]) == {(e.src, e.dst, 6, e.lo) for e in b}


def test_a_removal_that_is_not_the_plain_case_leaves_the_groups_as_they_were():
    """remove() takes the groups out before it compares them: a batch with an entry absent,
    or one whose group holds another entry, puts back what it took and says so."""
    a = _ports("r", 50)
    state = PolicyElements.of(a)
    table = dict(state.groups["pol_port"])
    absent = PolicyEntry(256, 300, "tcp", 9, 9, "absent")
    other = next(iter(a))._replace(rule="another rule")
    for batch in (list(a) + [absent], [other] + list(a)[1:]):
        (ports, groups), _rest = portgroups.split(batch)
        gone = {"pol_port": {}}
        assert portgroups.remove(state.groups, ports, groups, gone) is False
        assert state.groups["pol_port"] == table and not gone["pol_port"]
