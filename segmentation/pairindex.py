"""The pair index of a compiled policy map: its east-west entries by
(source identity, destination identity), for :meth:`PolicyMap.between`.

Shape: ``{src << 16 | dst: found}``, an int key (identities are 16 bits),
where ``found`` is the entry itself for the one entry most pairs have and a
sorted tuple of entries from two on (no 2-tuple key and no 1-tuple per pair:
at 10,000 rules ~1 MiB less). An index is never changed in place: a new map
gets a copy with only the pairs its edit touched redone (:func:`carry`).
"""
from __future__ import annotations

import itertools
import operator
from typing import Iterable

_SRC, _DST = operator.itemgetter(0), operator.itemgetter(1)   # of a PolicyEntry


def key(src: int, dst: int) -> int:
    """The index key of the identity pair ``(src, dst)``."""
    return src << 16 | dst


def build(entries: Iterable) -> dict:
    """The index of ``entries`` (PolicyEntry; a pass over them, no Python call per entry for the keys)."""
    pairs: dict = {}
    entries = list(entries)
    keys = map(operator.or_, map(operator.lshift, map(_SRC, entries), itertools.repeat(16)), map(_DST, entries))
    for pair, entry in zip(keys, entries):
        found = pairs.get(pair)
        if found is None:
            pairs[pair] = entry
        elif found.__class__ is list:
            found.append(entry)
        else:
            pairs[pair] = [found, entry]
    for pair, found in pairs.items():
        if found.__class__ is list:
            pairs[pair] = tuple(sorted(found))
    return pairs


def lookup(pairs: dict, src: int, dst: int) -> tuple:
    """The entries from ``src`` to ``dst`` in ``pairs``, sorted; ``()`` when none."""
    found = pairs.get(src << 16 | dst, ())
    return found if found.__class__ is tuple else (found,)


def carry(pairs: dict, gone: set, added: set) -> dict:
    """The index of ``(entries - gone) | added`` given ``pairs``, the index of
    ``entries``: only the identity pairs ``gone`` and ``added`` touch are redone
    (10,000 rules: a full :func:`build` is 6-9 ms). ``pairs`` itself is returned,
    shared, when nothing is touched."""
    touched: dict = {}
    for entry in itertools.chain(gone, added):
        touched.setdefault(entry.src << 16 | entry.dst, set())
    for entry in added:
        touched[entry.src << 16 | entry.dst].add(entry)
    if not touched:
        return pairs
    pairs = dict(pairs)
    for pair, found in touched.items():
        before = pairs.get(pair, ())
        found.update(e for e in (before if before.__class__ is tuple else (before,)) if e not in gone)
        if len(found) > 1:
            pairs[pair] = tuple(sorted(found))
        elif found:
            pairs[pair] = found.pop()
        else:
            pairs.pop(pair, None)
    return pairs
