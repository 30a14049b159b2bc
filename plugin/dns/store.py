"""What the daemon has learned from DNS answers: bounded, expiring, per rule.

An entry is ``(network, identity, rule, address)`` -> :class:`Learned`
(the name, when, until when). Several entries may map to one datapath
element (:class:`~plugin.enforce.fqdn.Grant`): the element lives as long as
the longest of them.

Bounds: at most ``max_per_segment`` entries of one segment (identity) of a
network, ``max_per_network`` in one network and ``max_total`` in all. At a
bound a new entry is refused (fail closed: the address stays denied) and the
caller logs it; entries already there are still refreshed by new answers.
The segment's share keeps one segment whose server answers with many
addresses from using up the network's bound, which would refuse the other
segments' answers (U21-F5): it fails closed for its own segment first. Expired entries are dropped lazily (a heap
ordered by expiry), so a learn costs O(log n).

The TTL floor (``min_ttl``, 60 s by the contract) keeps an address long
enough for the container to use the answer; ``max_ttl`` (a week) keeps a
bogus TTL from pinning it forever.

What an entry admitted outlives it: a dropped entry (expired, or its rule
removed) is remembered as *admitted* (``(identity, rule, address)`` and its
service), so that after a rule change conntrack pruning can tell a flow an
answer of a remaining rule admitted (it goes on after the answer expired)
from one only a removed rule's answers admitted (it is cut):
:meth:`LearnedStore.admitted`. At most ``max_per_network`` per network, the
oldest forgotten first; those of removed rules once their flows were ended
(:meth:`LearnedStore.settle`).

Which rules taught an element is written with it, as a *tag* (``Grant.tag``): a
number per network for one set of teachers ``(identity, proto, lo, hi, rule)``
(:meth:`LearnedStore.tags`). The datapath counts the flows an element admits under
its tag, so ``secnet show`` gives each DNS rule the flows its own answers opened,
and a flow to an address two rules taught to both (U11-F3). An element is written
again when a new rule teaches it; when a teacher's entry expires first, the
element keeps its tag until it is written again.
"""
from __future__ import annotations

import functools
import heapq
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from plugin.envvars import env_int
from segmentation.fqdn import Address, Learned

from plugin.enforce.fqdn import Grant

MIN_TTL = 60
MAX_TTL = 7 * 24 * 3600
MAX_PER_NETWORK = 16384
MAX_PER_SEGMENT = 4096     # a quarter of the network's: one segment cannot take all of it
MAX_TOTAL = 65536
MAX_TAG = 0xFFFF   # tags per network (eBPF keeps 16 bits); past it: 0, every rule of the service


def settings_from_env(env=os.environ) -> dict:
    """Store settings from ``SECNET_DNS_MIN_TTL`` (seconds, 1..MAX_TTL: lowered for
    tests only), ``SECNET_DNS_MAX_PER_SEGMENT``, ``SECNET_DNS_MAX_PER_NETWORK`` and
    ``SECNET_DNS_MAX_TOTAL`` (1..2^24 entries). Raises ValueError naming the variable
    when one is bad."""
    return {"min_ttl": env_int(env, "SECNET_DNS_MIN_TTL", MIN_TTL, 1, MAX_TTL),
            "max_per_segment": env_int(env, "SECNET_DNS_MAX_PER_SEGMENT", MAX_PER_SEGMENT, 1, 1 << 24),
            "max_per_network": env_int(env, "SECNET_DNS_MAX_PER_NETWORK", MAX_PER_NETWORK, 1, 1 << 24),
            "max_total": env_int(env, "SECNET_DNS_MAX_TOTAL", MAX_TOTAL, 1, 1 << 24)}


@dataclass
class Plan:
    """What one answer changes: ``grants`` for the datapath, ``refused``
    ``(rule, address)`` pairs over the bound. :meth:`LearnedStore.commit`
    records it once the datapath has the grants in force."""

    network: str
    entries: dict = field(default_factory=dict)   # (identity, rule, address) -> (Learned, Grant)
    grants: list = field(default_factory=list)
    refused: list = field(default_factory=list)


def _locked(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class LearnedStore:
    """The learned entries of every network; every public method is atomic."""

    def __init__(self, min_ttl: int = MIN_TTL, max_per_network: int = MAX_PER_NETWORK,
                 max_total: int = MAX_TOTAL, clock: Callable[[], float] = time.time,
                 max_per_segment: int = MAX_PER_SEGMENT):
        self.min_ttl, self.max_per_network, self.max_total = min_ttl, max_per_network, max_total
        self.max_per_segment = min(max_per_segment, max_per_network)
        self.clock = clock
        self._nets: dict = {}     # network -> {(identity, rule, address): (Learned, Grant)}
        self._per_id: dict = {}   # network -> {identity: entries of it}
        self._elements: dict = {}  # network -> {Grant.key: {entry keys}}
        self._heap: list = []     # (expires, network, key)
        self._past: dict = {}     # network -> OrderedDict {(identity, rule, address): Grant}: dropped
        self._tag_of: dict = {}   # network -> {(identity, (proto, lo, hi), frozenset of rules): tag}
        self._teachers: dict = {}  # network -> {tag: frozenset of (identity, proto, lo, hi, rule)}
        self._written: dict = {}  # network -> {Grant.key: the tag the datapath holds}
        self._count = 0
        self.refused_total = 0
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self._count

    @_locked
    def count(self, network: str) -> int:
        return len(self._nets.get(network, {}))

    def _put(self, network: str, key: tuple, value: tuple) -> None:
        entries = self._nets.setdefault(network, {})
        old = entries.get(key)
        if old is None:
            self._count += 1
            counts = self._per_id.setdefault(network, {})
            counts[key[0]] = counts.get(key[0], 0) + 1
        elif old[1].key != value[1].key:
            self._elements[network][old[1].key].discard(key)
        entries[key] = value
        self._elements.setdefault(network, {}).setdefault(value[1].key, set()).add(key)
        heapq.heappush(self._heap, (value[0].expires, network, key))

    def _drop(self, network: str, key: tuple) -> None:
        entries, elements = self._nets[network], self._elements[network]
        _learned, grant = entries.pop(key)
        self._count -= 1
        counts = self._per_id[network]
        counts[key[0]] -= 1
        if not counts[key[0]]:
            del counts[key[0]]
        self._remember(network, key, grant)
        holders = elements[grant.key]
        holders.discard(key)
        if not holders:
            del elements[grant.key]
            self._written.get(network, {}).pop(grant.key, None)
        if not entries:
            del self._nets[network], self._elements[network], self._per_id[network]

    def _remember(self, network: str, key: tuple, grant: Grant) -> None:
        """Keep that entry ``key`` admitted ``grant`` (bounded: the oldest go first)."""
        past = self._past.setdefault(network, OrderedDict())
        past.pop(key, None)
        past[key] = grant
        while len(past) > self.max_per_network:
            past.popitem(last=False)

    @_locked
    def admitted(self, network: str) -> dict:
        """``(identity, address) -> {(rule, proto, lo, hi)}``: which rules' answers
        taught each address, in force or not any more (expired, rule removed), as far
        as remembered (not across a daemon restart, nor past the bound)."""
        out: dict = {}
        past = self._past.get(network, {})
        now = ((k, v[1]) for k, v in self._nets.get(network, {}).items())
        for (identity, rule, address), g in [*past.items(), *now]:
            out.setdefault((identity, address), set()).add((rule, g.proto, g.lo, g.hi))
        return out

    @_locked
    def settle(self, network: str, rules: Iterable[tuple]) -> None:
        """Forget what was admitted for rules (``(identity, rule)``) not in ``rules``:
        the flows they admitted were ended, and a rule added again learns afresh."""
        past, keep = self._past.get(network), set(rules)
        for key in [k for k in past or () if k[:2] not in keep]:
            del past[key]

    @_locked
    def plan(self, network: str, matched: Iterable[tuple]) -> Plan:
        """Plan learning ``matched``: ``(FqdnEntry, segmentation.fqdn.Address)`` pairs."""
        now = self.clock()
        self.expire(now)
        plan, entries = Plan(network), self._nets.get(network, {})
        room_net = self.max_per_network - len(entries)
        room_all = self.max_total - len(self)
        room_id = dict(self._per_id.get(network, {}))   # identity -> entries, planned included
        for entry, found in matched:
            key = (entry.identity, entry.rule, found.address)
            if key in plan.entries:
                continue
            expires = now + min(max(found.ttl, self.min_ttl), MAX_TTL)
            if key in entries:   # an earlier answer may still be valid for longer: never shorten
                expires = max(expires, entries[key][0].expires)
            elif room_net <= 0 or room_all <= 0 or room_id.get(entry.identity, 0) >= self.max_per_segment:
                plan.refused.append((entry.rule, found.address))
                continue
            else:
                room_net, room_all = room_net - 1, room_all - 1
                room_id[entry.identity] = room_id.get(entry.identity, 0) + 1
            plan.entries[key] = (Learned(found.address, found.name, now, expires), _grant(entry, found, expires))
        self._plan_grants(plan)
        self.refused_total += len(plan.refused)
        return plan

    def _plan_grants(self, plan: Plan) -> None:
        """The writes ``plan`` needs: an element whose expiry grows or whose teachers change."""
        news: dict = {}
        for (_identity, rule, _address), (_learned, grant) in plan.entries.items():
            news.setdefault(grant.key, []).append((rule, grant))
        elements = self._elements.get(plan.network, {})
        written = self._written.get(plan.network, {})
        for element_key, pairs in news.items():
            holders = elements.get(element_key, ())
            tag = self._tag(plan.network, element_key, frozenset([r for r, _g in pairs] + [k[1] for k in holders]))
            now_until = self._element_expiry(plan.network, element_key) if holders else 0.0
            best = max((g for _r, g in pairs), key=lambda g: g.expires) if len(pairs) > 1 else pairs[0][1]
            if now_until < best.expires or tag != written.get(element_key):
                plan.grants.append(Grant(best.identity, best.address, best.family, best.proto, best.lo, best.hi,
                                         max(now_until, best.expires), best.name, tag=tag))

    def _tag(self, network: str, element_key: tuple, rules: frozenset) -> int:
        """The tag of the DNS rules ``rules`` (texts) teaching an element of ``element_key``'s
        segment and service in ``network`` (a new one the first time; 0 past MAX_TAG)."""
        identity, _address, *service = element_key
        key = (identity, tuple(service), rules)
        tags = self._tag_of.setdefault(network, {})
        tag = tags.get(key)
        if tag is None:
            known = self._teachers.setdefault(network, {})
            tag = max(known, default=0) + 1
            if tag > MAX_TAG:
                return 0
            tags[key], known[tag] = tag, frozenset((identity, *service, rule) for rule in rules)
        return tag

    @_locked
    def tags(self, network: str) -> dict:
        """``tag -> frozenset of (identity, proto, lo, hi, rule)``: the DNS rules (and their
        segment and service) that taught the elements written with that tag."""
        return dict(self._teachers.get(network, {}))

    def _wrote(self, network: str, grants: Iterable[Grant]) -> None:
        written = self._written.setdefault(network, {})
        for g in grants:
            written[g.key] = g.tag

    @_locked
    def commit(self, plan: Plan) -> None:
        """Record a plan whose grants are in force."""
        for key, value in plan.entries.items():
            self._put(plan.network, key, value)
        self._wrote(plan.network, plan.grants)

    @_locked
    def expire(self, now: float | None = None) -> None:
        """Drop the entries whose time is up (the kernel drops its elements itself)."""
        now = self.clock() if now is None else now
        while self._heap and self._heap[0][0] <= now:
            expires, network, key = heapq.heappop(self._heap)
            entries = self._nets.get(network, {})
            if key in entries and entries[key][0].expires <= now:
                self._drop(network, key)

    def _element_expiry(self, network: str, element_key: tuple) -> float:
        """When the element ``element_key`` expires now (0: not held)."""
        entries = self._nets.get(network, {})
        holders = self._elements.get(network, {}).get(element_key, ())
        return max((entries[k][1].expires for k in holders), default=0.0)

    @_locked
    def current(self, network: str) -> dict:
        """``(identity, rule) -> {address: Learned}`` of the entries in force."""
        self.expire()
        out: dict = {}
        for (identity, rule, address), (learned, _g) in self._nets.get(network, {}).items():
            out.setdefault((identity, rule), {})[address] = learned
        return out

    @_locked
    def grants(self, network: str) -> list:
        """One grant per element the network should hold now, each with its longest expiry."""
        self.expire()
        out = [self._element_grant(network, holders)
               for holders in self._elements.get(network, {}).values() if holders]
        self._wrote(network, out)
        return out

    def _element_grant(self, network: str, holders) -> Grant:
        """The grant of an element held by ``holders`` (entry keys): the longest expiry, the
        tag of its teachers."""
        entries = self._nets[network]
        best = max((entries[k][1] for k in holders), key=lambda g: g.expires)
        return replace(best, tag=self._tag(network, best.key, frozenset(k[1] for k in holders)))

    @_locked
    def forget(self, network: str, keep_rules: Iterable[tuple] | None = None) -> tuple:
        """Drop the entries whose ``(identity, rule)`` is not in ``keep_rules``
        (None: all of the network). Returns ``(revoke, regrant)``: element
        keys no entry holds any more, and grants to re-apply with the
        (shorter) expiry of the entries that still hold them."""
        entries = self._nets.get(network, {})
        keep = set(keep_rules or ())
        doomed = [k for k in entries if (k[0], k[1]) not in keep]
        touched = {entries[k][1].key for k in doomed}
        for k in doomed:
            self._drop(network, k)
        if keep_rules is None:   # the network is gone: nothing of it to remember
            for table in (self._past, self._tag_of, self._teachers, self._written):
                table.pop(network, None)
        revoke, regrant = [], []
        for element_key in sorted(touched):
            holders = self._elements.get(network, {}).get(element_key)
            if not holders:
                revoke.append(element_key)
                continue
            regrant.append(self._element_grant(network, holders))
        self._wrote(network, regrant)
        return revoke, regrant

    @_locked
    def forget_identities(self, network: str, identities: Iterable[int]) -> list:
        """Drop every entry of ``identities`` (segment identities about to be freed) and
        what they admitted: none of it may pass to the next holder of the identity.
        Returns the element keys to revoke (an element key holds its identity, so no
        other entry keeps one of them)."""
        identities = set(identities)
        entries = self._nets.get(network, {})
        doomed = [k for k in entries if k[0] in identities]
        revoke = sorted({entries[k][1].key for k in doomed})
        for k in doomed:
            self._drop(network, k)
        past = self._past.get(network)
        for k in [k for k in past or () if k[0] in identities]:
            del past[k]
        return revoke

    @_locked
    def restore(self, network: str, grants: Iterable[Grant], fqdns: Iterable) -> int:
        """Adopt what the kernel still holds after a restart: each element is
        attributed to the DNS rules (``FqdnEntry``) of its identity and service
        whose pattern matches its name (or, names lost, to all of them)."""
        from segmentation.fqdn import matches
        now, fqdns, count = self.clock(), list(fqdns), 0
        for g in grants:
            same = [e for e in fqdns if (e.identity, e.proto, e.lo, e.hi) == g.key[:1] + g.key[2:]]
            named = [e for e in same if g.name and matches(e.pattern, g.name)]
            for e in named or same:
                if g.expires > now:
                    self._put(network, (e.identity, e.rule, g.address),
                              (Learned(g.address, g.name, g.learned or now, g.expires), g))
                    count += 1
            self._adopt_tag(network, g, named or same)
        return count

    def _adopt_tag(self, network: str, grant: Grant, fqdns: list) -> None:
        """Learn what the kernel's tag of ``grant`` meant: the rules it is attributed to
        (a restarted daemon; a tag seen first wins)."""
        if not grant.tag or not fqdns:
            return
        self._written.setdefault(network, {})[grant.key] = grant.tag
        if grant.tag in self._teachers.get(network, {}):
            return
        rules = frozenset(e.rule for e in fqdns)   # all of grant's segment and service (restore)
        service = (grant.proto, grant.lo, grant.hi)
        self._teachers.setdefault(network, {})[grant.tag] = frozenset((grant.identity, *service, r) for r in rules)
        self._tag_of.setdefault(network, {}).setdefault((grant.identity, service, rules), grant.tag)


def _grant(entry, found: Address, expires: float) -> Grant:
    return Grant(entry.identity, found.address, found.family, entry.proto, entry.lo, entry.hi,
                 expires, found.name)
