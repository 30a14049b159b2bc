"""The one-port entries of a policy delta in bulk (pure; :class:`elements.PolicyElements`).

Most entries of a policy are one port between two identities (``web->api:tcp/8080``):
in ``pol_port`` each is its own group and its group *is* the set element
``(src, dst, protocol number, port)``. A policy set of 10,000 rules removes and
adds 10,000 of them; here they are picked out, grouped and applied to the
groups table by C-level passes (``map``, ``itertools``, ``dict.update``) instead of
a Python call per entry. A batch that is not the plain case (a group that holds
or gets two entries, an entry absent) is left to the entry-by-entry path: the
functions change nothing then and say so.
"""
from __future__ import annotations

import collections
import itertools
import operator

from segmentation.policymap import PolicyEntry
from segmentation.protocols import FLOW, PORT_PROTOCOLS

NAME = "pol_port"
_NUMBERS = {name: l4.number4 for name, l4 in FLOW.items()}
_SRC, _DST, _PROTO, _LO, _HI = (operator.itemgetter(i) for i in range(5))


def split(entries) -> tuple:
    """``((one-port entries, their groups), the other entries)`` of ``entries``; lists."""
    entries = list(entries)
    is_policy = list(map(operator.is_, map(type, entries), itertools.repeat(PolicyEntry)))
    policy = list(itertools.compress(entries, is_policy))
    rest = list(itertools.compress(entries, map(operator.not_, is_policy)))
    one_port = list(map(operator.and_, map(operator.eq, map(_LO, policy), map(_HI, policy)),
                        map(frozenset(PORT_PROTOCOLS).__contains__, map(_PROTO, policy))))
    ports = list(itertools.compress(policy, one_port))
    rest += itertools.compress(policy, map(operator.not_, one_port))
    groups = list(zip(map(_SRC, ports), map(_DST, ports), map(_NUMBERS.__getitem__, map(_PROTO, ports)),
                      map(_LO, ports)))
    return (ports, groups), rest


def remove(sets: dict, ports: list, groups: list, gone: dict) -> bool:
    """Take ``ports`` (their ``groups``) out of ``sets[NAME]`` when each is the one entry
    of its group; the emptied groups into ``gone[NAME]``. False (nothing changed) otherwise."""
    if not ports:
        return True
    table = sets.get(NAME)
    if table is None or not all(map(operator.eq, map(table.get, groups), ports)):
        return False
    collections.deque(map(table.__delitem__, groups), 0)
    gone[NAME].update(dict.fromkeys(groups))
    return True


def add(sets: dict, ports: list, groups: list, gone: dict, born: dict) -> bool:
    """Put ``ports`` into ``sets[NAME]`` when each fills a group of its own that is empty;
    new elements into ``born[NAME]``, except groups emptied by this delta (taken out of
    ``gone[NAME]``: the element stays). False (nothing changed) otherwise."""
    if not ports:
        return True
    table = sets.setdefault(NAME, {})
    if any(map(table.__contains__, groups)) or len(set(groups)) != len(groups):
        return False
    table.update(zip(groups, ports))
    fresh = dict.fromkeys(groups)
    emptied = gone.get(NAME)
    if emptied:
        again = emptied.keys() & fresh.keys()
        collections.deque(map(emptied.__delitem__, again), 0)
        collections.deque(map(fresh.__delitem__, again), 0)
    born[NAME].update(fresh)
    return True
