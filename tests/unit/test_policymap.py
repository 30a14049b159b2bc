"""segmentation.policymap and identities: compiled policy as data, deltas, stable identities."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from segmentation.compiler import segments_of
from segmentation.identities import FIRST_SEGMENT, MemoryAllocator, assign
from segmentation.model import Policy
from segmentation.options import NetworkOptions
from segmentation import policymap
from segmentation.policymap import compile_policy_map, recompile_policy_map
from segmentation.rules import parse_rules

SEGS = ["web", "api", "db", "cache"]
RULES = ["web->api:tcp/8080", "*->db:udp/53", "api->db:tcp/5432-5440", "10.0.0.0/8->web:tcp/80",
         "web->[2001:db8::/32]:tcp/443", "cache->*", "*->*:icmp", "db->db:tcp/1"]
NAMING = ["x->web:tcp/22", "y->*:udp/9", "*->z", "10.1.0.0/16->x:tcp/80", "x->10.2.0.0/16"]


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
    for live in (members_a, members_b):
        identities = assign(old_ids, segments_of(options, live))
        assert recompile_policy_map(old, old_options, options, identities) == \
            compile_policy_map(options, identities)
    again = assign(old_ids, segments_of(old_options, members_b))   # members only
    assert recompile_policy_map(old, old_options, old_options, again) == compile_policy_map(old_options, again)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(RULES + NAMING)), st.lists(st.sampled_from(RULES + NAMING), min_size=1),
       st.booleans(), st.sampled_from(["allow", "deny"]), st.lists(st.sampled_from(SEGS + ["x", "y", "z"])))
def test_an_edit_remembered_by_the_options_compiles_and_deltas_as_afresh(a, edit, add, intra, members):
    """``Policy.add_rules``/``remove_rules`` leave the edit on the new options; the
    recompile uses it (and knows its delta): both must equal the full computation."""
    old_options = NetworkOptions(rules=parse_rules(" ".join(a)), intra=intra)
    old_options.named_segments()                       # derived before the edit, as the daemon has it
    rules = parse_rules(" ".join(edit))
    if add:
        options = Policy(old_options).add_rules(rules).options
    else:
        present = [r for r in rules if r in old_options.rules]
        if not present:
            return
        options = Policy(old_options).remove_rules(present).options
    assert options.edit_from(old_options.rules) is not None
    fresh = NetworkOptions(rules=options.rules, intra=intra)
    assert options == fresh and options.named_segments() == fresh.named_segments()
    old_ids = assign({}, segments_of(old_options, members))
    old = compile_policy_map(old_options, old_ids)
    identities = assign(old_ids, segments_of(options, members))
    new = recompile_policy_map(old, old_options, options, identities)
    afresh = compile_policy_map(options, identities)
    assert new == afresh
    assert old.delta(new) == old.delta(afresh)         # the remembered delta is the computed one
    assert old.apply(old.delta(new)) == afresh


def test_a_new_segment_is_a_delta_of_its_own_entries_only():
    first = policy(["*->db:udp/53", "web->api:tcp/8080"])
    second = policy(["*->db:udp/53", "web->api:tcp/8080"], segments=SEGS + ["new"],
                    identities=first.identities)
    delta = first.delta(second)
    new_id = second.identities["new"]
    assert not delta.entries_removed and not delta.cidrs_added
    assert {(e.src, e.dst, e.rule) for e in delta.entries_added} == {
        (new_id, second.identities["db"], "*->db:udp/53"), (new_id, new_id, "intra")}


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
        test_an_edit_remembered_by_the_options_compiles_and_deltas_as_afresh()
    finally:
        policymap._PICK_GONE = saved
