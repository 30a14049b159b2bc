"""The nft element computation (pure): disjoint pieces with attribution, and deltas."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from plugin.enforce.backend import Port
from plugin.enforce.nftables.backend import NftBackend
from plugin.enforce.nftables.elements import (
    SCHEMAS, PolicyElements, apply_delta, diff, disjoint, intra_identities, port_elements, ports_elements)
from segmentation.identities import PENDING, QUARANTINED
from segmentation.policymap import CidrEntry, PolicyEntry, PolicyMap


def test_disjoint_cuts_overlaps_and_keeps_who_covers_what():
    got = disjoint([(((80, 90),), "a"), (((85, 95),), "b"), (((100, 100),), "c")])
    assert got == {((80, 84),): {"a"}, ((85, 90),): {"a", "b"}, ((91, 95),): {"b"},
                   ((100, 100),): {"c"}}


def test_disjoint_leaves_a_lone_box_alone_and_merges_equal_neighbours():
    assert disjoint([(((1, 5), (10, 20)), "x")]) == {((1, 5), (10, 20)): {"x"}}
    assert disjoint([(((1, 5),), "x"), (((6, 9),), "x")]) == {((1, 9),): {"x"}}


boxes1 = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1])),
                  min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.tuples(st.integers(0, 20), st.integers(0, 6)),
                          st.tuples(st.integers(0, 20), st.integers(0, 6))), min_size=1, max_size=5))
def test_disjoint_pieces_cover_every_point_with_exactly_its_boxes(raw):
    boxes = [(((a, a + da), (b, b + db)), i) for i, ((a, da), (b, db)) in enumerate(raw)]
    pieces = disjoint(boxes)
    for x, y in itertools.product(range(28), range(28)):
        covering = {label for ((xl, xh), (yl, yh)), label in boxes if xl <= x <= xh and yl <= y <= yh}
        found = [labels for ((xl, xh), (yl, yh)), labels in pieces.items()
                 if xl <= x <= xh and yl <= y <= yh]
        assert found == ([covering] if covering else []), (x, y)


IDS = st.sampled_from([256, 257, 258])
SERVICE = st.one_of(
    st.tuples(st.sampled_from(["tcp", "udp"]), st.sampled_from([(0, 65535), (80, 80), (53, 53),
                                                                 (70, 90), (85, 100), (1, 1024)])),
    st.tuples(st.sampled_from(["icmp", "any"]), st.just((0, 0))))
RULE = st.sampled_from(["r1", "r2", "*", "intra"])
ENTRY = st.builds(lambda s, d, svc, r: PolicyEntry(s, d, svc[0], svc[1][0], svc[1][1], r), IDS, IDS, SERVICE, RULE)
CIDR = st.builds(lambda direction, i, cidr, svc, r: CidrEntry(direction, i, 6 if ":" in cidr else 4, cidr,
                                                             svc[0], svc[1][0], svc[1][1], r),
                 st.sampled_from(["ingress", "egress"]), IDS,
                 st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "fd00::/8"]),
                 SERVICE, RULE)
POLICY = st.frozensets(st.one_of(ENTRY, CIDR), max_size=12)


@settings(max_examples=300, deadline=None)
@given(POLICY, POLICY)
def test_the_element_delta_of_two_policies_turns_the_first_into_the_second(a, b):
    state = PolicyElements.of(a)
    before = state.flat()
    delta = state.change(b - a, a - b)
    fresh = PolicyElements.of(b)
    assert _nonempty(apply_delta(before, delta)) == _nonempty(fresh.flat())
    assert _nonempty(state.attribution()) == _nonempty(fresh.attribution())
    untouched = {(n, e) for n, els in before.items() for e in els} - {
        (n, e) for n, els in delta.delete.items() for e in els}
    assert not untouched & {(n, e) for n, els in delta.add.items() for e in els}


@settings(max_examples=200, deadline=None)
@given(st.lists(POLICY, min_size=2, max_size=5))
def test_a_chain_of_edits_ends_where_the_last_policy_starts(chain):
    """Groups go from one entry to several and back over successive edits."""
    state = PolicyElements.of(chain[0])
    for old, new in zip(chain, chain[1:]):
        state.change(new - old, old - new)
    fresh = PolicyElements.of(chain[-1])
    assert _nonempty(state.flat()) == _nonempty(fresh.flat())
    assert _nonempty(state.attribution()) == _nonempty(fresh.attribution())
    assert all(all(groups.values()) for groups in state.groups.values())


@settings(max_examples=200, deadline=None)
@given(POLICY)
def test_interval_pieces_never_overlap(entries):
    flat = PolicyElements.of(entries).flat()
    for name, els in flat.items():
        if not SCHEMAS[name][3]:
            continue
        for e1, e2 in itertools.combinations(els, 2):
            assert not all(lo1 <= hi2 and lo2 <= hi1 for (lo1, hi1), (lo2, hi2) in zip(e1, e2)), (name, e1, e2)


def test_overlapping_rules_share_the_piece_they_both_cover():
    a = PolicyEntry(256, 257, "tcp", 70, 90, "web->api:tcp/70-90")
    b = PolicyEntry(256, 257, "tcp", 85, 100, "web->api:tcp/85-100")
    pieces = PolicyElements.of({a, b}).attribution()["pol_range"]
    assert pieces[((256, 256), (257, 257), (6, 6), (85, 90))] == {a.key, b.key}
    assert pieces[((256, 256), (257, 257), (6, 6), (70, 84))] == {a.key}


def _nonempty(elements: dict) -> dict:
    return {name: els for name, els in elements.items() if els}


def _port(identity=256, quarantine=None, **kw) -> Port:
    return Port("e1", "snv1", "02:42:0A:e0:00:05", "10.224.0.5", "fd00:224::5", identity, "web",
                quarantine, **kw)


def test_port_elements_of_members_pending_and_quarantined():
    member = port_elements(_port())
    assert member["id4"] == {("10.224.0.5",): (256,)} and member["ports"] == {("snv1",): None}
    assert ("snv1", "02:42:0a:e0:00:05", "10.224.0.5") in member["ids4"]
    # its own link-local address is one of its identity's addresses (U10-F4), not in ids6
    assert member["id6"] == {("fd00:224::5",): (256,), ("fe80::42:aff:fee0:5",): (256,)}
    assert member["ll6"] == {("snv1", "fe80::42:aff:fee0:5"): None}
    assert member["ids6"] == {("snv1", "02:42:0a:e0:00:05", "fd00:224::5"): None}
    # each of its addresses as ``a . a``: an ICMP error's source is an end of its flow (U23-F3)
    assert member["self4"] == {("10.224.0.5", "10.224.0.5"): None}
    assert member["self6"] == {("fd00:224::5", "fd00:224::5"): None,
                               ("fe80::42:aff:fee0:5", "fe80::42:aff:fee0:5"): None}
    pending = port_elements(_port(PENDING))
    assert pending["id4"] == {("10.224.0.5",): (PENDING,)} and "ports" not in pending
    bad = port_elements(_port(QUARANTINED, quarantine="empty label"))
    assert bad["quarantined"] == {("snv1",): None} and "ports" not in bad
    assert bad["ids4"] == member["ids4"]      # anti-spoofing holds for every port
    assert bad["id6"][("fe80::42:aff:fee0:5",)] == (QUARANTINED,)


def test_a_join_is_a_delta_of_its_own_elements():
    other = Port("e2", "snv2", "02:42:0a:e0:00:06", "10.224.0.6", None, 257, "api")
    delta = diff(ports_elements([other]), ports_elements([other, _port()]))
    assert not delta.delete and delta.add["id4"] == {("10.224.0.5",): (256,)}
    assert delta.add["self4"] == {("10.224.0.5", "10.224.0.5"): None}   # in the same delta
    moved = diff(ports_elements([_port()]), ports_elements([_port(257)]))
    assert moved.delete["id4"] == {("10.224.0.5",): (256,)} and moved.add["id4"] == {("10.224.0.5",): (257,)}
    assert "self4" not in moved.delete and "self4" not in moved.add   # its address stays
    left = diff(ports_elements([other, _port()]), ports_elements([other]))
    assert left.delete["self4"] == {("10.224.0.5", "10.224.0.5"): None}


class _Event:
    def __init__(self, family, table):
        self.family, self.table = family, table


def test_owns_names_the_network_of_its_tables_only():
    backend = NftBackend()
    assert backend.owns(_Event("inet", "secnet_0123456789ab")) == "0123456789ab"
    assert backend.owns(_Event("bridge", "secnet_0123456789ab")) == "0123456789ab"
    assert backend.owns(_Event("ip", "filter")) is None
    assert backend.owns(_Event("", "")) is None


def test_every_set_a_port_fills_is_a_port_set():
    """A set that port_elements fills must be in PORT_SETS, or the backend's record of
    what a port delta wrote misses it and drift finds the kernel's elements unexpected."""
    from plugin.enforce.nftables.elements import PORT_SETS   # noqa: PLC0415
    port = Port(endpoint_id="e1", name="snv1", mac="02:42:0a:00:00:02", ipv4="10.236.0.2",
                ipv6="fd00:236::2", identity=300, segment="web",
                published=(("tcp", "", 18080, 8080),))
    quarantined = Port(endpoint_id="e2", name="snv2", mac="02:42:0a:00:00:03", ipv4="10.236.0.3",
                       ipv6=None, identity=QUARANTINED, segment=None, quarantine="bad")
    filled = set(port_elements(port)) | set(port_elements(quarantined))
    assert filled - set(PORT_SETS) == set()
    assert {"arp4", "pub4", "quarantined"} <= filled


def test_the_groups_table_is_rebuilt_once_it_holds_under_a_quarter_of_its_peak():
    """A dict never shrinks when keys leave: after a large policy the table is copied."""
    import sys
    big = [PolicyEntry(256 + i // 1000, 300, "tcp", i % 1000 + 1, i % 1000 + 1, f"r{i}") for i in range(20_000)]
    state = PolicyElements.of(big)
    table = sys.getsizeof(state.groups["pol_port"])
    kept = big[:100]
    state.change((), big[100:])
    assert state.groups == PolicyElements.of(kept).groups
    assert sys.getsizeof(state.groups["pol_port"]) * 50 < table
    state.change(big[100:], ())                  # and it grows again as before
    assert state.groups == PolicyElements.of(big).groups


def test_a_group_of_one_entry_keeps_the_entry_itself():
    """No (set, group) key and no 1-tuple per entry; a set from the second entry on, and
    back to nothing when both leave."""
    one = PolicyEntry(256, 257, "tcp", 80, 80, "a->b:tcp/80")
    two = PolicyEntry(256, 257, "tcp", 80, 80, "*->b:tcp/80")
    state = PolicyElements.of([one])
    assert state.groups == {"pol_port": {(256, 257, 6, 80): one}}
    state.change([two], ())
    assert state.groups["pol_port"][(256, 257, 6, 80)] == {one, two}
    delta = state.change((), [one, two])
    assert dict(delta.delete) == {"pol_port": {(256, 257, 6, 80): None}}
    assert not state.groups.get("pol_port")


def _intra_by_index(policy: PolicyMap) -> list:
    """The definition: identities whose pair to themselves has an ``any`` entry."""
    return [i for i in sorted(set(policy.identities.values()))
            if any(e.proto == "any" for e in policy.between(i, i))]


@settings(max_examples=200, deadline=None)
@given(st.lists(POLICY, min_size=1, max_size=4))
def test_intra_from_the_elements_or_the_entries_is_the_index_s_without_building_it(chain):
    """``intra`` of the bridge table, after each of a chain of deltas, as the backend
    computes it: never by building the map's pair index (U: a 50,000-rule one-rule add)."""
    ids = {"a": 256, "b": 257, "c": 258}
    state = PolicyElements.of(chain[0])
    for old, new in zip(chain, chain[1:] + chain[:1]):
        state.change(new - old, old - new)
        policy = PolicyMap(ids, frozenset(e for e in new if e.__class__ is PolicyEntry),
                           frozenset(e for e in new if e.__class__ is CidrEntry))
        got = intra_identities(policy, state), intra_identities(policy)
        assert "_pairs" not in policy.__dict__
        assert got == (_intra_by_index(policy),) * 2
