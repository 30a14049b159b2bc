"""The (src, dst, proto) groups of an eBPF network's policy entries: the unit a delta
rewrites in the versioned ``policy`` map (pure; plugin.enforce.ebpf.backend).

An entry's prefixes in the LPM trie (``maps.policy_content``) start with its group, and
the prefixes of one group are disjoint from every other group's: a delta rewrites only
the groups its entries belong to, whatever the size of the policy.
"""
from __future__ import annotations

import operator
from typing import Iterable, Optional

from segmentation.policymap import PolicyDelta, PolicyMap

from . import maps

_GROUP = operator.itemgetter(0, 1, 2)   # a PolicyEntry's (src, dst, proto)


def group_index(entries: Iterable) -> dict:
    """(src, dst, proto) -> set of PolicyEntry: the unit a delta rewrites."""
    index: dict = {}
    for e in entries:
        index.setdefault(_GROUP(e), set()).add(e)
    return index


def touched_groups(old: PolicyMap, delta: PolicyDelta, index: Optional[dict] = None) -> tuple:
    """(groups, entries before, after) of the (src, dst, proto) groups of ``delta``'s entries;
    ``index``: group_index(old.entries), kept by the caller (else built here)."""
    groups = set(map(_GROUP, delta.entries_added | delta.entries_removed))
    if index is None:
        index = group_index(e for e in old.entries if _GROUP(e) in groups)
    before = {e for g in groups for e in index.get(g, ())}
    return groups, before, (before - delta.entries_removed) | delta.entries_added


def delta_changes(old: PolicyMap, new: PolicyMap, delta: PolicyDelta, index: Optional[dict] = None,
                  touched: Optional[tuple] = None) -> dict:
    """map name -> (content before, content after) of what ``delta`` touches: only the
    (src, dst, proto) groups of its entries (their prefixes are disjoint from every other
    group's), the CIDR map only when CIDRs changed. ``touched``: touched_groups(old, delta, index)."""
    _groups, before, after = touched or touched_groups(old, delta, index)
    out = {"policy": (maps.policy_content(before), maps.policy_content(after)),
           "restricted": (maps.restricted_content(old), maps.restricted_content(new))}
    if delta.cidrs_added or delta.cidrs_removed or delta.fqdns_added or delta.fqdns_removed:
        out["cidrs"] = (maps.cidr_content(maps.policy_cidrs(old)), maps.cidr_content(maps.policy_cidrs(new)))
    return out


def regroup(index: dict, groups: set, after: set) -> None:
    """Make ``index`` (group_index) hold ``after``: the entries of ``groups`` now."""
    regrouped = group_index(after)
    for group in groups - regrouped.keys():     # every entry of the group removed
        index.pop(group, None)
    index.update(regrouped)
