"""segmentation.sharedset: a set made from another shares its elements and reads as a frozenset."""
from __future__ import annotations

import contextlib
import pickle

from hypothesis import given, settings, strategies as st

from segmentation import sharedset
from segmentation.sharedset import SharedSet, changed

ITEMS = st.integers(0, 40)
EDITS = st.lists(st.tuples(st.frozensets(ITEMS, max_size=6), st.frozensets(ITEMS, max_size=6)), max_size=12)


@contextlib.contextmanager
def small_bounds(share_min: int = 1, flat_min: int = 2):
    """Sharing from a base of ``share_min`` elements, flattening past ``flat_min`` changed ones
    (or an eighth of the base): what a policy of 10,000 entries does, on a few."""
    saved = sharedset.SHARE_MIN, sharedset.FLAT_MIN
    sharedset.SHARE_MIN, sharedset.FLAT_MIN = share_min, flat_min
    try:
        yield
    finally:
        sharedset.SHARE_MIN, sharedset.FLAT_MIN = saved


def _check_reads_as(made, want: frozenset, other: frozenset) -> None:
    assert made == want and want == made and not made != want and len(made) == len(want)
    assert sorted(made) == sorted(want) and len(list(made)) == len(want)   # each element once
    assert all(x in made for x in want) and not any(x in made for x in other - want)
    for op in ("__or__", "__and__", "__sub__", "__xor__"):
        got, expected = getattr(made, op)(other), getattr(want, op)(other)
        assert got == expected and isinstance(got, frozenset), op
    assert other - made == other - want and other | made == other | want and other & made == other & want
    assert hash(made) == hash(want) and pickle.loads(pickle.dumps(made)) == want


@settings(max_examples=300, deadline=None)
@given(st.frozensets(ITEMS, min_size=1), EDITS, st.frozensets(ITEMS))
def test_a_chain_of_changes_reads_as_the_frozenset_it_stands_for(start, edits, other):
    made, want = start, start
    for removed, added in edits:
        before = made
        with small_bounds():
            made = changed(made, removed, added)
        want = (want - removed) | added
        _check_reads_as(made, want, other)
        if isinstance(made, SharedSet):   # the base is shared, never copied, and the overlays stay bounded
            assert made.base is (before.base if isinstance(before, SharedSet) else before)
            assert len(made.removed) + len(made.added) <= max(2, len(made.base) >> 3)
            assert made.removed <= made.base and not made.added & made.base
        if isinstance(before, SharedSet) and isinstance(made, SharedSet) and before.base is made.base:
            assert made - before == want - (before.base - before.removed | before.added)   # the overlays' fast path
            assert before - made == frozenset(before) - want


def test_a_large_set_changed_a_little_is_shared_and_a_small_one_copied():
    big = frozenset(range(sharedset.SHARE_MIN))
    made = changed(big, {0}, {-1})
    assert isinstance(made, SharedSet) and made.base is big and made.removed == {0} and made.added == {-1}
    assert changed(made, {-1}, {0}) is big                 # back to the base: the base itself
    assert changed(big, (), ()) is big and changed(made, (), ()) is made
    small = frozenset(range(sharedset.SHARE_MIN - 1))
    assert type(changed(small, {0}, {-1})) is frozenset
    many = set(range(-1, -2 - (len(big) >> 3), -1))       # past an eighth of the base: flat again
    assert type(changed(big, (), many)) is frozenset
