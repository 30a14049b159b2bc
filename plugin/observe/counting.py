"""Backend counters mapped back to rules and segment pairs (for show and metrics).

A backend reports :class:`~plugin.enforce.backend.Counters` in neutral terms:
per policy-map key (``PolicyEntry.key``, ``CidrEntry.key``, ``FqdnEntry.key``) and per
``(src identity, dst identity)``. This module names them: the rule texts
behind each key, and the segments (or ``(outside)``) behind each identity.
A key that several rules share counts for each of them, and so does a flow
that several keys allow (overlapping port ranges or CIDRs: ``allowed``);
a segment pair's total adds each counted packet once (``allowed_once``).

The host is outside the network (the contract's "Outside is everything that
is not a container of this network: the host itself, ..."): the backends
keep a ``HOST`` identity of their own (the host's flows are judged apart),
but a pair with the host is named ``(outside)`` here, as `secnet log` names
the host's addresses.
"""
from __future__ import annotations

import collections

from segmentation.identities import HOST as HOST_ID, OUTSIDE as OUTSIDE_ID, RESERVED
from segmentation.policymap import INGRESS, PolicyMap

OUTSIDE = "(outside)"


def names(policy: PolicyMap) -> dict:
    """identity -> segment name, ``(outside)`` (the outside and the host) or the reserved name."""
    out = {i: f"({n})" for i, n in RESERVED.items()}
    out[OUTSIDE_ID] = out[HOST_ID] = OUTSIDE
    out.update({ident: seg for seg, ident in policy.identities.items()})
    return out


def _add(total: list, counter) -> None:
    if counter:
        total[0] += counter[0]
        total[1] += counter[1]


def per_rule(policy: PolicyMap, counters) -> dict:
    """rule text (or ``intra``) -> [packets, bytes] of the flows its keys opened."""
    out = collections.defaultdict(lambda: [0, 0])
    for entry in list(policy.entries) + list(policy.cidrs) + list(policy.fqdns):
        _add(out[entry.rule], counters.allowed.get(entry.key))
    return out


def per_pair(policy: PolicyMap, counters) -> tuple:
    """({(src, dst): [pk, bytes]} allowed, same dropped, same would-drop (audit mode)),
    the ends named as segments or ``(outside)``. Allowed packets count once per pair,
    however many rules count them (``Counters.allowed_once``)."""
    name = names(policy)
    allowed = collections.defaultdict(lambda: [0, 0])
    once = counters.allowed_once or counters.allowed   # a hand-made Counters may give allowed only
    seen = set()
    for e in policy.entries:
        if e.key not in seen:
            seen.add(e.key)
            _add(allowed[(name[e.src], name[e.dst])], once.get(e.key))
    for c in policy.cidrs:
        if c.key not in seen:
            seen.add(c.key)
            seg = name[c.identity]
            pair = (OUTSIDE, seg) if c.direction == INGRESS else (seg, OUTSIDE)
            _add(allowed[pair], once.get(c.key))
    for f in policy.fqdns:   # a DNS rule opens flows from its segment to the outside
        if f.key not in seen:
            seen.add(f.key)
            _add(allowed[(name[f.identity], OUTSIDE)], once.get(f.key))
    return allowed, _named_pairs(name, counters.dropped), _named_pairs(name, counters.would_drop)


def _named_pairs(name: dict, table) -> dict:
    out = collections.defaultdict(lambda: [0, 0])
    for (src, dst), value in table.items():
        _add(out[(name.get(src, f"identity {src}"), name.get(dst, f"identity {dst}"))], value)
    return out
