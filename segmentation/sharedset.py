"""An immutable set that shares its elements with the set it was made from.

A policy map's entries are tens of thousands of tuples, and a join that brings a
new segment changes a handful of them (its ``intra`` entry, the ``*`` rules'). A
new ``frozenset`` per map copies every entry (10,000 rules: ~0.4 ms) and the old
map's release frees them all again (~0.3 ms), both on the join's path.
:class:`SharedSet` is ``(base - removed) | added`` kept as those three sets:
``base`` is shared, never copied, by every version made from it, and only the
small ``removed``/``added`` overlays are per version. When the overlays grow past
an eighth of ``base`` (at least :data:`FLAT_MIN`), the next version is a flat
``frozenset`` again, so a long chain of edits costs one copy per ``len(base) / 8``
changed elements, and a lookup stays two or three hash probes.

Reads behave as a ``frozenset``'s: ``in``, ``len``, iteration (in no particular
order), ``==`` with any set, and ``|``, ``&``, ``-``, ``^`` give a ``frozenset``.
"""
from __future__ import annotations

import itertools
from collections.abc import Set
from typing import AbstractSet, Iterable, Union

#: overlays (removed + added elements) a version may carry before it is flattened,
#: at least; the bound is an eighth of the base above that
FLAT_MIN = 64
#: a base smaller than this is copied (a small frozenset's copy costs less than the overlays)
SHARE_MIN = 1024

AnySet = Union[frozenset, "SharedSet"]


class SharedSet(Set):
    """``(base - removed) | added`` with ``removed <= base`` and ``added & base`` empty
    (the representation of a value on a given base is unique). Made by :func:`changed`."""

    __slots__ = ("base", "removed", "added")

    def __init__(self, base: frozenset, removed: frozenset, added: frozenset) -> None:
        self.base, self.removed, self.added = base, removed, added

    def __contains__(self, item) -> bool:
        return item in self.added or (item in self.base and item not in self.removed)

    def __iter__(self):
        kept = itertools.filterfalse(self.removed.__contains__, self.base) if self.removed else self.base
        return itertools.chain(kept, self.added)

    def __len__(self) -> int:
        return len(self.base) - len(self.removed) + len(self.added)

    def __repr__(self) -> str:
        return f"SharedSet({len(self)} elements: {len(self.base)} shared, -{len(self.removed)} +{len(self.added)})"

    def __reduce__(self):   # pickled (a daemon's answer across processes) as the plain set it stands for
        return frozenset, (self.flat(),)

    def flat(self) -> frozenset:
        """The elements as one ``frozenset`` (a copy of them all)."""
        kept = self.base - self.removed if self.removed else self.base
        return kept | self.added if self.added else kept

    @classmethod
    def _from_iterable(cls, it) -> frozenset:   # what Set's operators build: a plain frozenset
        return frozenset(it)

    def __eq__(self, other) -> bool:
        if isinstance(other, SharedSet) and other.base is self.base:
            return self.removed == other.removed and self.added == other.added
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return len(self) == len(other) and self.flat() == flat(other)

    def __hash__(self) -> int:
        return hash(self.flat())

    def __sub__(self, other) -> frozenset:
        if isinstance(other, SharedSet) and other.base is self.base:   # the overlays alone
            return frozenset(itertools.filterfalse(other.__contains__, self.added)).union(
                other.removed - self.removed)
        return self.flat().difference(other) if isinstance(other, Iterable) else NotImplemented

    def __rsub__(self, other) -> frozenset:   # a pass over ``other`` alone
        return frozenset(itertools.filterfalse(self.__contains__, other)) if isinstance(other, Iterable) \
            else NotImplemented

    def __or__(self, other) -> frozenset:
        return self.flat().union(other) if isinstance(other, Iterable) else NotImplemented

    __ror__ = __or__

    def __and__(self, other) -> frozenset:
        if not isinstance(other, Iterable):
            return NotImplemented
        if isinstance(other, AbstractSet) and len(other) < len(self):   # a pass over the smaller
            return frozenset(filter(self.__contains__, other))
        return self.flat().intersection(other)

    __rand__ = __and__


def flat(items: Iterable) -> frozenset:
    """``items`` as a ``frozenset`` (itself when it is one)."""
    if isinstance(items, SharedSet):
        return items.flat()
    return items if isinstance(items, frozenset) else frozenset(items)


def changed(items: AnySet, removed: Iterable, added: Iterable) -> AnySet:
    """``(items - removed) | added`` without copying ``items``: a :class:`SharedSet` on
    ``items``' base (``items`` itself when nothing changes), or a flat ``frozenset`` when
    ``items`` is small (below :data:`SHARE_MIN`) or the overlays would pass their bound.
    ``removed`` and ``added`` may overlap (an element in both is in the result)."""
    if not removed and not added:
        return items
    if isinstance(items, SharedSet):
        base, gone, new = items.base, set(items.removed), set(items.added)
    else:
        base, gone, new = items, set(), set()
    if len(base) < SHARE_MIN:   # as (items - removed) | added, at most one copy
        items = flat(items)
        items = items.difference(removed) if removed else items
        return items.union(added) if added else items
    for item in removed:
        if item in base:
            gone.add(item)
        else:
            new.discard(item)
    for item in added:
        if item in base:
            gone.discard(item)
        else:
            new.add(item)
    if not gone and not new:
        return base
    if len(gone) + len(new) > max(FLAT_MIN, len(base) >> 3):
        return (base - gone) | new
    return SharedSet(base, frozenset(gone), frozenset(new))
