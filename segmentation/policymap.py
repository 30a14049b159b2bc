"""The compiled policy as data: what a fixed datapath program looks up.

A network's policy compiles to a :class:`PolicyMap` -- pure, backend-neutral
data, never rule text:

* ``identities``: segment name -> identity (:mod:`segmentation.identities`);
* ``entries``: east-west allowances, each ``(src identity, dst identity,
  L4 protocol, port range)`` with the rule that produced it (for counters,
  ``explain`` and the drop log). ``secnet.intra=allow`` is the entry
  ``(s, s, any)`` of every segment, with the rule ``intra``;
* ``cidrs``: allowances between a segment and an outside CIDR, per
  direction (``ingress``: CIDR source; ``egress``: CIDR destination);
* ``fqdns``: allowances from a segment to the addresses that DNS answers
  for a name pattern gave the segment's containers (``dns(NAME)`` rules);
  the addresses themselves are learned at run time (``plugin.dns``), never
  compiled;
* the network's settings: egress default, internal, intra.

Both backends consume this: nftables as set and map elements behind a fixed
set of rules, eBPF as entries of BPF maps behind fixed programs. A change
of policy or membership is a :class:`PolicyDelta` between two maps, applied
as elements, never as new rules.
"""
from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterable, Mapping, NamedTuple, Optional

from . import pairindex, sharedset
from .identities import OUTSIDE
from .options import NetworkOptions
from .protocols import ANY
from .rules import Endpoint, Service, rule_texts, rules_not_in
from .sharedset import AnySet

if TYPE_CHECKING:
    from .model import RuleEdit

INTRA = "intra"
INGRESS, EGRESS = "ingress", "egress"


class _Service:
    """An entry's ``proto``/``lo``/``hi`` as the rule grammar's Service."""

    @property
    def service(self) -> Service:
        return Service(self.proto, self.lo, self.hi)


class PolicyEntry(NamedTuple):
    """An east-west allowance: new flows from ``src`` to ``dst`` identity.

    ``proto``: ``tcp``, ``udp``, ``icmp`` or ``any``; ``lo``/``hi``: the
    destination port range, inclusive (``0, 65535`` for every port; ``0, 0``
    for icmp and any). ``rule``: canonical text of the rule, or ``intra``.
    A named tuple: a policy holds tens of thousands, hashed and compared in
    every delta (equal, ordered and hashed field by field, as a frozen
    dataclass would be).
    """

    src: int
    dst: int
    proto: str
    lo: int
    hi: int
    rule: str

    @property
    def service(self) -> Service:
        return Service(self.proto, self.lo, self.hi)

    @property
    def key(self) -> tuple:
        """What the datapath matches: several rules may give the same key
        (``*->db:udp/53`` and ``web->db:udp/53``), and ranges of one
        ``(src, dst, proto)`` may overlap: backends count keys, not entries."""
        return self[:5]


@dataclass(frozen=True, order=True)
class CidrEntry(_Service):
    """An allowance between segment ``identity`` and an outside CIDR.

    ``direction`` is ``ingress`` (from ``cidr`` to the segment) or
    ``egress`` (from the segment to ``cidr``); ``family`` is 4 or 6.
    """

    direction: str
    identity: int
    family: int
    cidr: str
    proto: str
    lo: int
    hi: int
    rule: str

    @property
    def key(self) -> tuple:
        """What the datapath matches (several rules may give the same key)."""
        return (self.direction, self.identity, self.family, self.cidr, self.proto, self.lo, self.hi)


@dataclass(frozen=True, order=True)
class FqdnEntry(_Service):
    """An allowance from segment ``identity`` to the learned addresses of ``pattern``.

    ``pattern``: canonical (``api.example.com``, ``*.example.org``);
    ``proto``/``lo``/``hi`` as in :class:`PolicyEntry`; ``rule``: its text.
    """

    identity: int
    pattern: str
    proto: str
    lo: int
    hi: int
    rule: str

    @property
    def key(self) -> tuple:
        """The rule's own counter key: ``("fqdn", identity, proto, lo, hi, rule)``. The
        datapaths count a learned element's flows under its tag (the rules that taught
        it, ``plugin.dns.store``); ``plugin.dns.views.learned_counters`` spreads them
        to these keys."""
        return (FQDN_KEY, self.identity, self.proto, self.lo, self.hi, self.rule)

    @property
    def service_key(self) -> tuple:
        """``("fqdn", identity, proto, lo, hi)``: what a datapath counts a flow under when
        it does not know which rules taught the address (tag 0)."""
        return self.key[:5]


FQDN_KEY = "fqdn"   # first field of FqdnEntry.key
#: a datapath's counter of a learned element's tag: ``(FQDN_TAG_KEY, tag)`` (``plugin.dns.store``)
FQDN_TAG_KEY = "fqdn-tag"


@dataclass(frozen=True)
class Settings:
    """Network-wide defaults that no entry carries."""

    intra: str = "allow"          # allow | deny (already compiled into entries)
    egress: str = "allow"         # allow | deny: outside destinations no CIDR entry names
    internal: bool = False        # nothing leaves or enters the network
    mode: str = "enforce"         # enforce | audit (audit: drop nothing, report would-drops)


@dataclass(frozen=True)
class PolicyMap:
    """The compiled policy of one network (see the module docstring).

    ``entries``, ``cidrs``, ``fqdns``: a ``frozenset``, or in a map recompiled from
    another (:func:`recompile_policy_map`, :meth:`apply`) a
    :class:`~segmentation.sharedset.SharedSet` that shares the other map's elements
    (read like a ``frozenset``; its operators give one)."""

    identities: Mapping[str, int]
    entries: AnySet = frozenset()
    cidrs: AnySet = frozenset()
    settings: Settings = field(default_factory=Settings)
    fqdns: AnySet = frozenset()

    @property
    def segments(self) -> tuple:
        """The segments of the network, sorted by name."""
        return self._cached("_segments", lambda: tuple(sorted(self.identities)))

    def between(self, src: int, dst: int) -> tuple:
        """The entries from identity ``src`` to ``dst``, sorted (:mod:`segmentation.pairindex`, made once)."""
        return pairindex.lookup(self._cached("_pairs", self._make_pairs), src, dst)

    def _make_pairs(self) -> dict:   # on first use: carried from an older map's (_carry_pairs), or built
        pending = self.__dict__.pop("_pairs_from", None)
        return pairindex.carry(*pending) if pending is not None else pairindex.build(self.entries)

    def _cached(self, name: str, make):
        """A value derived from this (immutable) map, computed on first use."""
        found = self.__dict__.get(name)
        if found is None:
            found = make()
            object.__setattr__(self, name, found)
        return found

    @property
    def internal(self) -> bool:
        return self.settings.internal

    @property
    def ingress_restricted(self) -> frozenset:
        """Identities that some CIDR-source rule names: only such rules let the outside in."""
        return frozenset(c.identity for c in self.cidrs if c.direction == INGRESS)

    def delta(self, new: "PolicyMap") -> "PolicyDelta":
        """What turns this map into ``new`` (a pass over both maps' entries;
        :func:`recompile_policy_map` gives it for what an edit touched)."""
        return PolicyDelta(
            entries_added=new.entries - self.entries,
            entries_removed=self.entries - new.entries,
            cidrs_added=new.cidrs - self.cidrs,
            cidrs_removed=self.cidrs - new.cidrs,
            identities=MappingProxyType(dict(new.identities)),
            settings=new.settings if new.settings != self.settings else None,
            fqdns_added=new.fqdns - self.fqdns,
            fqdns_removed=self.fqdns - new.fqdns,
        )

    def apply(self, delta: "PolicyDelta") -> "PolicyMap":
        """This map with ``delta`` applied (``old.apply(old.delta(new)) == new``)."""
        return PolicyMap(
            identities=delta.identities,
            entries=_changed(self.entries, delta.entries_removed, delta.entries_added),
            cidrs=_changed(self.cidrs, delta.cidrs_removed, delta.cidrs_added),
            settings=delta.settings or self.settings,
            fqdns=_changed(self.fqdns, delta.fqdns_removed, delta.fqdns_added),
        )

    def __eq__(self, other) -> bool:
        return (isinstance(other, PolicyMap) and dict(self.identities) == dict(other.identities)
                and self.entries == other.entries and self.cidrs == other.cidrs
                and self.settings == other.settings and self.fqdns == other.fqdns)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class PolicyDelta:
    """Entries to add and remove; ``settings`` is None when they did not change."""

    entries_added: frozenset
    entries_removed: frozenset
    cidrs_added: frozenset
    cidrs_removed: frozenset
    identities: Mapping[str, int]
    settings: Settings | None = None
    fqdns_added: frozenset = frozenset()
    fqdns_removed: frozenset = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.entries_added or self.entries_removed or self.cidrs_added
                    or self.cidrs_removed or self.settings or self.fqdns_added
                    or self.fqdns_removed)


def compile_policy_map(options: NetworkOptions, identities: Mapping[str, int]) -> PolicyMap:
    """Compile ``options`` over the segments of ``identities`` (segment -> identity).

    ``identities`` must hold every segment a rule names (``*`` stands for
    all of them); raises KeyError otherwise.
    """
    segments = sorted(identities)
    entries, cidrs, fqdns = set(), set(), set()
    _rules_entries(options.rules, identities, segments, entries, cidrs, fqdns)
    if options.intra == "allow":
        for seg in segments:
            entries.add(PolicyEntry(identities[seg], identities[seg], ANY, 0, 0, INTRA))
    return PolicyMap(MappingProxyType(dict(identities)), frozenset(entries), frozenset(cidrs),
                     _settings(options), frozenset(fqdns))


def recompile_policy_map(old: PolicyMap, old_options: NetworkOptions, options: NetworkOptions,
                         identities: Mapping[str, int],
                         edit: Optional["RuleEdit"] = None) -> tuple[PolicyMap, "PolicyDelta"]:
    """``compile_policy_map(options, identities)`` and ``old.delta()`` of it, given
    ``old``, the map of ``old_options``: only the entries of the rules added and
    removed are computed (every entry carries its rule, so the entries of two rules
    never coincide), and when segments come or go, those of the rules with a ``*``
    and the segments' ``intra`` entries. Costs what the change touches, not what the
    policy holds (members alone: the ``*`` rules' entries of the segments that came or
    went, not of every segment). ``edit`` (:class:`~segmentation.model.RuleEdit`): the rules added
    and removed, when ``options`` came from ``old_options`` by that edit (else the
    rules are compared). A changed ``intra`` or a segment whose identity changed
    compiles afresh. Returns ``(new map, delta from old)``.
    """
    old_ids = old.identities
    if old_options.intra != options.intra or any(old_ids.get(s, i) != i for s, i in identities.items()):
        new_map = compile_policy_map(options, identities)
        return new_map, old.delta(new_map)
    same_ids = len(old_ids) == len(identities) and all(s in old_ids for s in identities)
    changed = _rules_changed(old_options, options, edit)
    if changed is None:   # most rules replaced: afresh costs less
        new_map = compile_policy_map(options, identities)
        return new_map, old.delta(new_map)
    gone_rules, new_rules = changed
    gone, gone_cidrs, gone_fqdns, new, new_cidrs, new_fqdns = set(), set(), set(), set(), set(), set()
    if not same_ids and (gone_rules or new_rules):   # '*' stands for other segments now
        gone_rules += old_options.star_rules()
        new_rules += options.star_rules()
    elif not same_ids:   # members alone: the '*' entries of the segments that came or went
        _star_entries(old_options.star_rules(), old_ids, [s for s in old_ids if s not in identities],
                      gone, gone_cidrs, gone_fqdns)
        _star_entries(options.star_rules(), identities, [s for s in identities if s not in old_ids],
                      new, new_cidrs, new_fqdns)
    if len(gone_rules) > _PICK_GONE:   # many: pick them out of the old map by their rule's text
        texts = set(rule_texts(gone_rules))
        gone, gone_cidrs, gone_fqdns = (_of_rules(old_set, texts) for old_set in (old.entries, old.cidrs, old.fqdns))
        gone_rules = ()
    for rules, ids, entries, cidrs, fqdns in ((gone_rules, old_ids, gone, gone_cidrs, gone_fqdns),
                                              (new_rules, identities, new, new_cidrs, new_fqdns)):
        _rules_entries(rules, ids, sorted(ids), entries, cidrs, fqdns)
    if options.intra == "allow" and not same_ids:
        gone.update(PolicyEntry(i, i, ANY, 0, 0, INTRA) for s, i in old_ids.items() if s not in identities)
        new.update(PolicyEntry(i, i, ANY, 0, 0, INTRA) for s, i in identities.items() if s not in old_ids)
    for pair, before in ((gone, new), old.entries), ((gone_cidrs, new_cidrs), old.cidrs), \
            ((gone_fqdns, new_fqdns), old.fqdns):
        _cancel(*pair, before)
    new_map = PolicyMap(old_ids if same_ids else MappingProxyType(dict(identities)),
                        _changed(old.entries, gone, new), _changed(old.cidrs, gone_cidrs, new_cidrs),
                        _settings(options), _changed(old.fqdns, gone_fqdns, new_fqdns))
    _carry_pairs(old, new_map, gone, new)
    return new_map, _edit_delta(old, new_map, (gone, new), (gone_cidrs, new_cidrs), (gone_fqdns, new_fqdns))


def _rules_changed(old_options: NetworkOptions, options: NetworkOptions, edit) -> Optional[tuple]:
    """``(gone, new)`` rules (lists: a rule may be in one twice; its entries are a set
    anyway): from ``edit`` when it was made from ``old_options``' rules, else by text;
    None when they are most of the rules (compiling afresh then costs less), found
    before the rules themselves are picked out."""
    def most(count: int) -> bool:
        return count > (len(old_options.rules) + len(options.rules)) // 2
    if edit is not None and edit.made_from(old_options.rules) and \
            len(options.rules) == len(edit.before) + len(edit.added) - len(edit.removed):
        return None if most(len(edit.removed) + len(edit.added)) else (list(edit.removed), list(edit.added))
    if old_options.rules == options.rules:
        return [], []
    before, after = old_options.rule_text_set(), options.rule_text_set()
    gone_texts, new_texts = before - after, after - before
    if most(len(gone_texts) + len(new_texts)):
        return None
    gone_rules = rules_not_in(old_options.rules, after) if gone_texts else []
    new_rules = rules_not_in(options.rules, before) if new_texts else []
    return None if most(len(gone_rules) + len(new_rules)) else (gone_rules, new_rules)


def _cancel(gone: set, added: set, before: frozenset) -> None:
    """Take out of both ``gone`` and ``added`` what they share and ``before`` holds: an
    entry removed and given again stays as it is (a freed identity handed to the next
    new segment, a ``*`` rule's entries redone for a segment that came): then the new
    map shares ``before`` instead of copying it for nothing."""
    both = [entry for entry in gone & added if entry in before] if gone and added else ()
    if both:
        gone.difference_update(both)
        added.difference_update(both)


def _carry_pairs(old: PolicyMap, new: PolicyMap, gone: set, added: set) -> None:
    """``new`` (``(old - gone) | added``) makes its :meth:`PolicyMap.between` index from ``old``'s when first
    asked, only the pairs touched redone (not a copy now: ~0.9 ms of a new segment's join at 10,000 rules);
    edits nobody asked chain onto the last index made, up to :data:`_CARRY_MAX` entries."""
    pairs, pending = old.__dict__.get("_pairs"), old.__dict__.get("_pairs_from")
    if pairs is not None:
        pending = (pairs, frozenset(gone), frozenset(added))
    elif pending is not None:
        pending = (pending[0], pending[1].union(gone), pending[2].difference(gone).union(added))
    if pending is not None and len(pending[1]) + len(pending[2]) <= _CARRY_MAX:   # else: built when asked
        object.__setattr__(new, "_pairs_from", pending)


def _edit_delta(old: PolicyMap, new: PolicyMap, entries: tuple, cidrs: tuple, fqdns: tuple) -> PolicyDelta:
    """``old.delta(new)`` for ``new``'s sets made as ``(old - gone) | added``, from the
    ``(gone, added)`` pairs: costs what the edit touches, not what the map holds."""
    def added(pair, before):   # passes over the pairs' sets alone (``before`` may be a SharedSet)
        return frozenset(itertools.filterfalse(before.__contains__, pair[1]))

    def removed(pair, before):
        return frozenset(filter(before.__contains__, pair[0])).difference(pair[1])
    return PolicyDelta(
        entries_added=added(entries, old.entries), entries_removed=removed(entries, old.entries),
        cidrs_added=added(cidrs, old.cidrs), cidrs_removed=removed(cidrs, old.cidrs),
        identities=MappingProxyType(dict(new.identities)),
        settings=new.settings if new.settings != old.settings else None,
        fqdns_added=added(fqdns, old.fqdns), fqdns_removed=removed(fqdns, old.fqdns))


_PICK_GONE = 64            # rules: above this, their entries are picked out of the old map
_CARRY_MAX = 4096          # entries gone + added a map's pair index may have pending (_carry_pairs)
_RULE = operator.attrgetter("rule")


def _of_rules(entries: frozenset, texts: set) -> set:
    """The entries of ``entries`` that the rules of canonical ``texts`` gave (no Python call per entry)."""
    entries = list(entries)
    return set(itertools.compress(entries, map(texts.__contains__, map(_RULE, entries))))


def _changed(entries: AnySet, removed, added) -> AnySet:
    """``(entries - removed) | added``: a large set's elements shared, not copied
    (:func:`segmentation.sharedset.changed`)."""
    return sharedset.changed(entries, removed, added)


def _settings(options: NetworkOptions) -> Settings:
    return Settings(intra=options.intra, egress="deny" if options.internal else options.egress,
                    internal=options.internal, mode=getattr(options, "mode", "enforce"))


_TUPLE_NEW = tuple.__new__   # a PolicyEntry of a 6-tuple without the named tuple's Python __new__ (as _make)


def _rules_entries(rules: Iterable, identities: Mapping[str, int], segments: list, entries: set,
                   cidrs: set, fqdns: set) -> None:
    """:func:`_rule_entries` of each of ``rules``, the common case (a segment to a segment:
    one entry) inline: no Python call per rule (10,000 rules: 0.57x the CPU of a call apiece)."""
    add = entries.add
    for rule in rules:
        src, dst = rule.src, rule.dst
        if src.kind == "segment" == dst.kind:
            svc = rule.service
            add(_TUPLE_NEW(PolicyEntry, (identities[src.value], identities[dst.value], svc.proto, svc.lo, svc.hi,
                                         rule._text)))
        else:
            _rule_entries(rule, identities, segments, entries, cidrs, fqdns)


def _rule_entries(rule, identities: Mapping[str, int], segments: list, entries: set, cidrs: set,
                  fqdns: set) -> None:
    """Add the entries (east-west), CIDR entries and DNS-name entries of ``rule`` to
    ``entries``, ``cidrs`` and ``fqdns``."""
    svc, origin = rule.service, rule.text()
    if rule.src.kind == "segment" == rule.dst.kind:   # the common case, without the expansion
        entries.add(PolicyEntry(identities[rule.src.value], identities[rule.dst.value], svc.proto, svc.lo,
                                svc.hi, origin))
    elif rule.dst.kind == "fqdn":
        for src in _expand(rule.src, segments):
            fqdns.add(FqdnEntry(identities[src], rule.dst.value, svc.proto, svc.lo, svc.hi, origin))
    elif rule.src.kind == "cidr":
        for dst in _expand(rule.dst, segments):
            cidrs.add(_cidr(INGRESS, identities[dst], rule.src, svc, origin))
    elif rule.dst.kind == "cidr":
        for src in _expand(rule.src, segments):
            cidrs.add(_cidr(EGRESS, identities[src], rule.dst, svc, origin))
    else:
        for src in _expand(rule.src, segments):
            for dst in _expand(rule.dst, segments):
                entries.add(PolicyEntry(identities[src], identities[dst], svc.proto, svc.lo, svc.hi, origin))


def _star_entries(rules: Iterable, identities: Mapping[str, int], some: list, entries: set, cidrs: set,
                  fqdns: set) -> None:
    """Add the entries of the ``*`` rules ``rules`` in which a ``*`` stands for one of the
    segments ``some`` (of ``identities``): when only members changed, what the ``*``
    rules give the segments that came or went; the rest is the same before and after."""
    if not some:
        return
    every = sorted(identities)
    for rule in rules:
        if rule.src.kind == "all" == rule.dst.kind:   # some x every, every x some
            svc, origin = rule.service, rule.text()
            for seg in some:
                for other in every:
                    entries.add(PolicyEntry(identities[seg], identities[other], svc.proto, svc.lo, svc.hi, origin))
                    entries.add(PolicyEntry(identities[other], identities[seg], svc.proto, svc.lo, svc.hi, origin))
        else:   # one '*': it stands for ``some``
            _rule_entries(rule, identities, some, entries, cidrs, fqdns)


def _expand(endpoint: Endpoint, segments: Iterable[str]) -> tuple:
    return tuple(segments) if endpoint.kind == "all" else (endpoint.value,)


def _cidr(direction: str, identity: int, endpoint: Endpoint, svc: Service, origin: str) -> CidrEntry:
    return CidrEntry(direction, identity, endpoint.family, endpoint.value, svc.proto, svc.lo, svc.hi,
                     origin)


def allowing(pm: PolicyMap, src: int, dst: int, proto: str, port: int | None) -> PolicyEntry | None:
    """The first (sorted) entry of ``pm`` that allows a new ``proto``/``port`` flow
    from identity ``src`` to ``dst``, or None. ``port=None``: every port."""
    for entry in pm.between(src, dst):
        if entry.service.matches(proto, port):
            return entry
    return None


__all__ = ["PolicyEntry", "CidrEntry", "FqdnEntry", "FQDN_KEY", "FQDN_TAG_KEY", "Settings", "PolicyMap", "PolicyDelta",
           "compile_policy_map", "recompile_policy_map", "allowing", "INTRA", "INGRESS", "EGRESS", "OUTSIDE"]
