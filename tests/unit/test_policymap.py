"""segmentation.policymap and identities: compiled policy as data, deltas, stable identities."""
from __future__ import annotations

import collections
import contextlib

from hypothesis import given, settings, strategies as st

from segmentation.compiler import segments_of
from segmentation.identities import FIRST_SEGMENT, MemoryAllocator, assign, takeover
from segmentation.model import Policy
from segmentation.options import NetworkOptions
from segmentation import policymap, sharedset
from segmentation.policymap import PolicyEntry, compile_policy_map, recompile_policy_map
from segmentation.rules import parse_rules, segment_mentions

SEGS = ["web", "api", "db", "cache"]
RULES = ["web->api:tcp/8080", "*->db:udp/53", "api->db:tcp/5432-5440", "10.0.0.0/8->web:tcp/80",
         "web->[2001:db8::/32]:tcp/443", "cache->*", "*->*:icmp", "db->db:tcp/1"]
NAMING = ["x->web:tcp/22", "y->*:udp/9", "*->z", "10.1.0.0/16->x:tcp/80", "x->10.2.0.0/16"]


def same_pairs(a, b) -> bool:
    """``between`` of maps ``a`` and ``b`` agree on every identity pair either map names."""
    pairs = {(e.src, e.dst) for e in a.entries | b.entries}
    ids = set(a.identities.values()) | set(b.identities.values())
    pairs |= {(s, d) for s in ids for d in ids}
    return all(a.between(s, d) == b.between(s, d) for s, d in pairs)


def policy(rules, intra="allow", segments=SEGS, identities=None):
    options = NetworkOptions(rules=parse_rules(" ".join(rules)), intra=intra)
    return compile_policy_map(options, assign(identities or {}, segments))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(RULES)), st.lists(st.sampled_from(RULES)),
       st.sampled_from(["allow", "deny"]), st.sampled_from(["allow", "deny"]),
       st.lists(st.sampled_from(SEGS + ["x", "y"]), min_size=1))
def test_applying_the_delta_of_two_maps_to_the_first_gives_the_second(a, b, intra_a, intra_b, segs_b):
    first = policy(a, intra_a)
    second = policy(b, intra_b, segments=set(segs_b) | set(SEGS), identities=first.identities)
    delta = first.delta(second)
    assert first.apply(delta) == second
    assert first.delta(first).empty


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(RULES + NAMING)), st.lists(st.sampled_from(RULES + NAMING)),
       st.sampled_from(["allow", "deny"]), st.sampled_from(["allow", "deny"]),
       st.sampled_from(["allow", "deny"]), st.lists(st.sampled_from(SEGS + ["x", "y", "z"])),
       st.lists(st.sampled_from(SEGS + ["x", "y", "z"])))
def test_recompiling_from_the_previous_map_equals_compiling_afresh(a, b, intra_a, intra_b, egress,
                                                                   members_a, members_b):
    """Rules and members (segments) change; identities are kept as an allocator keeps them."""
    old_options = NetworkOptions(rules=parse_rules(" ".join(a)), intra=intra_a)
    options = NetworkOptions(rules=parse_rules(" ".join(b)), intra=intra_b, egress=egress)
    old_ids = assign({}, segments_of(old_options, members_a))
    old = compile_policy_map(old_options, old_ids)
    old.between(0, 0)   # the index of entries by pair: a recompiled map carries it
    for live in (members_a, members_b):
        identities = assign(old_ids, segments_of(options, live))
        new, delta = recompile_policy_map(old, old_options, options, identities)
        afresh = compile_policy_map(options, identities)
        assert new == afresh and delta == old.delta(afresh)
        assert same_pairs(new, afresh)
    again = assign(old_ids, segments_of(old_options, members_b))   # members only
    new, delta = recompile_policy_map(old, old_options, old_options, again)
    assert new == compile_policy_map(old_options, again) and delta == old.delta(new)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(RULES + NAMING)), st.lists(st.sampled_from(RULES + NAMING), min_size=1),
       st.booleans(), st.sampled_from(["allow", "deny"]), st.lists(st.sampled_from(SEGS + ["x", "y", "z"])))
def test_an_edit_compiles_and_deltas_as_afresh(a, edit, add, intra, members):
    """``Policy.add_rules``/``remove_rules`` give the edit with the new policy; the
    recompile given that edit (and the segment counts after it) must equal the full
    computation, map and delta."""
    old_options = NetworkOptions(rules=parse_rules(" ".join(a)), intra=intra)
    rules = parse_rules(" ".join(edit))
    if add:
        policy, made = Policy(old_options).add_rules(rules)
    else:
        present = [r for r in rules if r in old_options.rules]
        if not present:
            return
        policy, made = Policy(old_options).remove_rules(present)
    options = policy.options
    assert made is not None and made.made_from(old_options.rules)
    fresh = NetworkOptions(rules=options.rules, intra=intra)
    assert options == fresh
    counts = made.segment_counts(collections.Counter(segment_mentions(old_options.rules)))
    assert counts == collections.Counter(segment_mentions(options.rules))
    old_ids = assign({}, segments_of(old_options, members))
    old = compile_policy_map(old_options, old_ids)
    identities = assign(old_ids, segments_of(options, members, counts))
    assert identities == assign(old_ids, segments_of(fresh, members))
    old.between(0, 0)   # the index of entries by pair: the recompiled map carries it
    new, delta = recompile_policy_map(old, old_options, options, identities, made)
    afresh = compile_policy_map(options, identities)
    assert new == afresh
    assert same_pairs(new, afresh)
    assert delta == old.delta(afresh)                  # the edit's delta is the computed one
    assert old.apply(delta) == afresh


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(RULES + NAMING)), min_size=2, max_size=5),
       st.lists(st.lists(st.sampled_from(SEGS + ["x", "y", "z"])), min_size=5, max_size=5),
       st.sampled_from([4096, 3, 0]))
def test_a_chain_of_recompiles_nobody_asked_gives_the_index_of_the_last_map(steps, members, carry_max):
    """Maps recompiled one after another without ``between`` asked in between (a join, then
    another) make their pair index, when first asked, from the last one made; a chain past
    ``_CARRY_MAX`` entries builds it afresh. Either way it is the index of the map's entries."""
    saved, policymap._CARRY_MAX = policymap._CARRY_MAX, carry_max
    try:
        options = NetworkOptions(rules=parse_rules(" ".join(steps[0])))
        ids = assign({}, segments_of(options, members[0]))
        old = compile_policy_map(options, ids)
        old.between(0, 0)
        for k, rules in enumerate(steps[1:], 1):
            new_options = NetworkOptions(rules=parse_rules(" ".join(rules)))
            ids = assign(ids, segments_of(new_options, members[k]))
            old, _ = recompile_policy_map(old, options, new_options, ids)
            options = new_options
        afresh = compile_policy_map(options, ids)
        assert old == afresh and same_pairs(old, afresh)
    finally:
        policymap._CARRY_MAX = saved


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(RULES + NAMING)), st.sampled_from(["allow", "deny"]))
def test_between_gives_the_entries_of_a_pair_sorted(rules, intra):
    compiled = policy(rules, intra, segments=SEGS + ["x", "y", "z"])
    ids = set(compiled.identities.values())
    for s, d in {(s, d) for s in ids for d in ids} | {(e.src, e.dst) for e in compiled.entries}:
        assert compiled.between(s, d) == tuple(sorted(e for e in compiled.entries if (e.src, e.dst) == (s, d)))


def test_an_edit_made_from_other_rules_is_not_used():
    """A RuleEdit made from rules other than the old options' is ignored: the rules are compared."""
    old_options = NetworkOptions(rules=parse_rules("web->api:tcp/1 api->db:tcp/2"))
    elsewhere = NetworkOptions(rules=parse_rules("web->api:tcp/1"))
    policy, made = Policy(elsewhere).add_rules(parse_rules("db->web:tcp/3"))
    ids = assign({}, segments_of(policy.options, ()))
    old = compile_policy_map(old_options, ids)
    new, delta = recompile_policy_map(old, old_options, policy.options, ids, made)
    assert new == compile_policy_map(policy.options, ids) and delta == old.delta(new)
    assert {e.rule for e in delta.entries_removed} == {"api->db:tcp/2"}


def test_a_new_segment_is_a_delta_of_its_own_entries_only():
    first = policy(["*->db:udp/53", "web->api:tcp/8080"])
    second = policy(["*->db:udp/53", "web->api:tcp/8080"], segments=SEGS + ["new"],
                    identities=first.identities)
    delta = first.delta(second)
    new_id = second.identities["new"]
    assert not delta.entries_removed and not delta.cidrs_added
    assert {(e.src, e.dst, e.rule) for e in delta.entries_added} == {
        (new_id, second.identities["db"], "*->db:udp/53"), (new_id, new_id, "intra")}


def test_a_freed_identity_given_to_the_next_new_segment_changes_nothing():
    """A new segment no rule names takes the identity its predecessor freed: the same
    ``intra`` entry, so an empty delta and the old map's entries and index, not copies."""
    options = NetworkOptions(rules=parse_rules("*->db:udp/53 web->api:tcp/8080"))
    old_ids = assign({}, SEGS + ["fresh1"])
    old = compile_policy_map(options, old_ids)
    old.between(0, 0)
    ids = assign(old_ids, SEGS + ["fresh2"])
    assert ids["fresh2"] == old_ids["fresh1"]
    new, delta = recompile_policy_map(old, options, options, ids)
    assert delta.empty and new == compile_policy_map(options, ids)
    assert "_pairs" not in new.__dict__   # made when first asked, not copied at the recompile
    new.between(0, 0)
    assert new.entries is old.entries and new.__dict__["_pairs"] is old.__dict__["_pairs"]
    grown, delta = recompile_policy_map(new, options, options, assign(ids, SEGS + ["fresh2", "fresh3"]))
    fresh3 = grown.identities["fresh3"]
    assert not delta.entries_removed and {(e.src, e.dst, e.rule) for e in delta.entries_added} == {
        (fresh3, grown.identities["db"], "*->db:udp/53"), (fresh3, fresh3, "intra")}


def test_identities_are_stable_small_and_reserved_below_256():
    alloc = MemoryAllocator()
    first = alloc.allocate("n", ["web", "api"])
    assert set(first.values()) == {FIRST_SEGMENT, FIRST_SEGMENT + 1}
    again = alloc.allocate("n", ["api", "web", "db"])
    assert again["web"] == first["web"] and again["api"] == first["api"]
    freed = alloc.allocate("n", ["db"])
    assert freed == {"db": again["db"]}
    assert alloc.allocate("n", ["db", "new"])["new"] == FIRST_SEGMENT  # lowest free is reused


def test_picking_the_removed_rules_entries_out_of_the_old_map_compiles_the_same():
    """Many removed rules' entries are picked out of the old map instead of compiled
    again: the same properties hold with that path taken for every removal."""
    saved = policymap._PICK_GONE
    policymap._PICK_GONE = 0
    try:
        test_recompiling_from_the_previous_map_equals_compiling_afresh()
        test_an_edit_compiles_and_deltas_as_afresh()
    finally:
        policymap._PICK_GONE = saved


def test_the_pair_index_keeps_a_lone_entry_itself_and_sorts_several():
    """Most pairs have one entry: the index keeps it bare under an int key (no tuple per
    pair), and ``between`` still answers a sorted tuple; an edit carries the index (when the new map's is first asked)."""
    options = NetworkOptions(rules=parse_rules("a->b:tcp/80 a->b:udp/53 b->a:tcp/22"), intra="deny")
    ids = {"a": 256, "b": 257}
    pm = compile_policy_map(options, ids)
    assert [e.rule for e in pm.between(256, 257)] == ["a->b:tcp/80", "a->b:udp/53"]
    assert [e.rule for e in pm.between(257, 256)] == ["b->a:tcp/22"]
    assert pm.between(257, 257) == ()
    index = pm.__dict__["_pairs"]
    assert index[257 << 16 | 256].__class__ is PolicyEntry and index[256 << 16 | 257].__class__ is tuple
    smaller = NetworkOptions(rules=parse_rules("a->b:tcp/80 b->a:tcp/22 b->b:tcp/1"), intra="deny")
    new, _delta = recompile_policy_map(pm, options, smaller, ids)
    assert "_pairs" not in new.__dict__ and new.__dict__["_pairs_from"][0] is index   # carried when asked
    assert [e.rule for e in new.between(256, 257)] == ["a->b:tcp/80"]
    carried = new.__dict__["_pairs"]
    assert carried[256 << 16 | 257].__class__ is PolicyEntry and "_pairs_from" not in new.__dict__
    assert [e.rule for e in new.between(257, 257)] == ["b->b:tcp/1"]


def test_takeover_names_the_idle_segment_whose_identity_the_allocator_hands_out_next():
    ids = assign({}, ["a", "b", "c", "d"])            # 256..259
    assert takeover(ids, {"c", "b"}) == "b"            # the lowest idle identity
    assert assign({s: i for s, i in ids.items() if s != "b"}, ["a", "c", "d", "new"])["new"] == ids["b"]
    assert takeover(ids, set()) is None
    holed = {s: i for s, i in ids.items() if s != "a"}  # 256 free: a new segment gets it, not c's
    assert takeover(holed, {"c"}) is None


_ENDS = ["web", "api", "db", "*"]


@given(st.lists(st.tuples(st.sampled_from(_ENDS + ["10.0.0.0/8"]),
                          st.sampled_from(_ENDS + ["0.0.0.0/0", "dns(a.example.com)"]),
                          st.sampled_from(["", ":tcp/80", ":udp/53-60", ":icmp", ":any", ":tcp"])), max_size=30))
def test_the_rules_entries_in_one_pass_are_each_rules_own(parts):
    """_rules_entries (the segment-to-segment case inline) gives what _rule_entries gives
    rule by rule: the same entries (named tuples), CIDR and DNS-name entries."""
    texts = [f"{a}->{b}{svc}" for a, b, svc in parts if not (a == "10.0.0.0/8" and b[0] in "0d")]
    rules = parse_rules(" ".join(texts)) if texts else ()
    ids = {"web": 10, "api": 11, "db": 12}
    one = set(), set(), set()
    for rule in rules:
        policymap._rule_entries(rule, ids, sorted(ids), *one)
    bulk = set(), set(), set()
    policymap._rules_entries(rules, ids, sorted(ids), *bulk)
    assert bulk == one and all(type(e) is PolicyEntry for e in bulk[0])


@contextlib.contextmanager
def _sharing_small_sets():
    """SharedSet from a base of one element, flattened past two changed ones (or an eighth):
    what maps of 10,000 entries do, on the few of these tests."""
    saved = sharedset.SHARE_MIN, sharedset.FLAT_MIN
    sharedset.SHARE_MIN, sharedset.FLAT_MIN = 1, 2
    try:
        yield
    finally:
        sharedset.SHARE_MIN, sharedset.FLAT_MIN = saved


STARS = ["*->10.3.0.0/16:tcp/1", "10.4.0.0/16->*:udp/2", "*->dns(*.example.org)", "*->*:tcp/9"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(RULES + NAMING + STARS)), min_size=2, max_size=5),
       st.lists(st.lists(st.sampled_from(SEGS + ["x", "y", "z"])), min_size=10, max_size=10),
       st.sampled_from(["allow", "deny"]))
def test_maps_that_share_their_entries_compile_delta_and_apply_as_afresh(steps, members, intra):
    """A chain of recompiles, members alone then rules and members changing, whose maps
    share the entries of the map before (SharedSet): each equals the map compiled afresh,
    its delta is the full computation's, and a delta between two of them, applied to the
    first, gives the second."""
    with _sharing_small_sets():
        options = NetworkOptions(rules=parse_rules(" ".join(steps[0])), intra=intra)
        ids = assign({}, segments_of(options, members[0]))
        old = compile_policy_map(options, ids)
        made = [old]
        for k, rules in enumerate(steps[1:], 1):
            for new_options, live in ((options, members[2 * k - 1]),   # a join or a leave: members alone
                                      (NetworkOptions(rules=parse_rules(" ".join(rules)), intra=intra), members[2 * k])):
                ids = assign(ids, segments_of(new_options, live))
                new, delta = recompile_policy_map(old, options, new_options, ids)
                afresh = compile_policy_map(new_options, ids)
                assert new == afresh and afresh == new and delta == old.delta(afresh) == old.delta(new)
                assert same_pairs(new, afresh) and old.apply(delta) == afresh
                old, options = new, new_options
                made.append(new)
        first, last = made[0], made[-1]
        assert first.apply(first.delta(last)) == last and last.apply(last.delta(first)) == first
        assert made[-2].apply(made[-2].delta(last)) == last and last.delta(last).empty


def test_a_new_segment_shares_the_entries_of_the_map_before():
    """10,000 rules: the join of a segment no rule names adds its ``intra`` entry to a map
    that shares the old map's entries (no copy of them; the old map's release frees none)."""
    rules = [f"s{k % 100}->s{k // 100 % 100}:tcp/{1000 + k // 10000}" for k in range(10000)]
    options = NetworkOptions(rules=parse_rules(" ".join(rules)))
    old_ids = assign({}, segments_of(options, []))
    old = compile_policy_map(options, old_ids)
    ids = assign(old_ids, list(old_ids) + ["fresh"])
    new, delta = recompile_policy_map(old, options, options, ids)
    fresh = ids["fresh"]
    assert delta.entries_added == {PolicyEntry(fresh, fresh, "any", 0, 0, "intra")} and not delta.entries_removed
    assert isinstance(new.entries, sharedset.SharedSet) and new.entries.base is old.entries
    assert new == compile_policy_map(options, ids) and len(new.entries) == len(old.entries) + 1
    gone, delta = recompile_policy_map(new, options, options, old_ids)   # it leaves: the old entries again
    assert gone.entries is old.entries and delta.entries_removed == {PolicyEntry(fresh, fresh, "any", 0, 0, "intra")}


def test_an_edit_carries_the_star_rules_it_knew():
    """Options made by an edit know their ``*`` rules from the options before (no pass over
    every rule at the next join that brings a segment), the same as found afresh."""
    before = NetworkOptions(rules=parse_rules("*->db:udp/53 web->api:tcp/8080 cache->*"))
    assert [r.text() for r in before.star_rules()] == ["*->db:udp/53", "cache->*"]
    added, _ = Policy(before).add_rules(parse_rules("x->*:tcp/1 a->b"))
    removed, _ = Policy(added.options).remove_rules(parse_rules("*->db:udp/53 a->b"))
    for made in (added.options, removed.options):
        assert "_star" in made.__dict__   # carried
        assert made.star_rules() == NetworkOptions(rules=made.rules).star_rules()
    unknown = NetworkOptions(rules=parse_rules("*->db"))   # not known before: found when asked
    made, _ = Policy(unknown).add_rules(parse_rules("a->*"))
    assert "_star" not in made.options.__dict__ and [r.text() for r in made.options.star_rules()] == ["*->db", "a->*"]
