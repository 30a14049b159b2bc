"""Membership and policy: the immutable inputs of the compiler.

A :class:`Member` is one endpoint of a secnet network as the plugin knows
it: its addresses and the segment its container's label (or driver-opt)
resolved to. ``segment=None`` means "not known yet"; such an endpoint
belongs to no segment and the backend drops its traffic (fail closed). A
member with a ``quarantine`` reason (e.g. an invalid label value) belongs to
no segment either and all its traffic is dropped whatever the rules say.
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass, replace
from typing import Iterable, Optional

from .errors import PolicyError
from .names import check_segment_name
from .options import NetworkOptions
from .rules import Rule, rule_texts, rules_not_in, rules_without, segment_mentions, unique_rules


@dataclass(frozen=True)
class Member:
    """One endpoint: plain addresses (no prefix) and its segment.

    The segment name is checked unless the member is quarantined (a
    quarantined member may carry the bad name it was quarantined for).
    """

    endpoint_id: str
    segment: str | None
    ipv4: str | None = None
    ipv6: str | None = None
    quarantine: str | None = None

    def __post_init__(self) -> None:
        if self.segment is not None and self.quarantine is None:
            check_segment_name(self.segment)
        for name, version in (("ipv4", 4), ("ipv6", 6)):
            value = getattr(self, name) or None  # "" means no address
            object.__setattr__(self, name, value)
            if value is not None and ipaddress.ip_address(value).version != version:
                raise ValueError(f"Member.{name} {value!r} is not an IPv{version} address")

    @property
    def effective_segment(self) -> str | None:
        """The segment this member is enforced in: None if quarantined or unknown."""
        return None if self.quarantine is not None else self.segment


@dataclass(frozen=True)
class Policy:
    """The policy of one network: its options, rules included."""

    options: NetworkOptions

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.options.rules

    def with_rules(self, rules: Iterable[Rule]) -> "Policy":
        """The same policy with its rules replaced (duplicates dropped)."""
        return Policy(replace(self.options, rules=unique_rules(rules)))

    def add_rules(self, rules: Iterable[Rule]) -> tuple["Policy", Optional["RuleEdit"]]:
        """The policy with ``rules`` appended (already present ones kept once), and
        the edit that made it (None when the old rules held duplicates: no plain edit).
        Costs a copy of the rules, not a pass over them in Python (10,000 rules)."""
        old, present = self.rules, self.options.rule_text_set()
        if len(present) != len(old):
            return self.with_rules(old + tuple(rules)), None
        added = tuple(rules_not_in(unique_rules(rules), present))
        options = replace(self.options, rules=old + added).with_rule_text_set(
            present.union(rule_texts(added)) if added else present).with_derived_of(self.options, added=added)
        return Policy(options), RuleEdit(old, added=added)

    def remove_rules(self, rules: Iterable[Rule]) -> tuple["Policy", Optional["RuleEdit"]]:
        """The policy without ``rules``, and the edit that made it (None when a rule was
        there more than once). Raises PolicyError naming a rule not in the policy."""
        doomed, present = unique_rules(rules), self.options.rule_text_set()
        for rule in doomed:
            if rule.text() not in present:
                raise PolicyError(f"rule '{rule.text()}' is not in the policy")
        texts = frozenset(rule_texts(doomed))
        if len(present) != len(self.rules):   # a rule there twice: no plain edit
            return self.with_rules(rules_not_in(self.rules, texts)), None
        options = replace(self.options, rules=rules_without(self.rules, texts)).with_rule_text_set(
            present - texts).with_derived_of(self.options, removed=texts)
        return Policy(options), RuleEdit(self.rules, removed=doomed)


@dataclass(frozen=True)
class RuleEdit:
    """One edit of a policy's rules, for the compiler to work on instead of every rule.

    ``before``: the rules the edit was made from; ``added``: rules that were not
    in them (appended); ``removed``: rules that were in them, once each.
    """

    before: tuple
    added: tuple = ()
    removed: tuple = ()

    def made_from(self, rules: tuple) -> bool:
        """Was this edit made from ``rules``? (Cheap when it was: the same rule objects.)"""
        return rules is self.before or (len(rules) == len(self.before) and rules == self.before)

    def segment_counts(self, before: collections.Counter) -> collections.Counter:
        """``before`` (segment -> how many times the rules before name it) after this
        edit; segments no rule names any more are left out."""
        counts = before.copy()
        counts.update(segment_mentions(self.added))
        counts.subtract(segment_mentions(self.removed))
        return +counts
