"""Membership and policy: the immutable inputs of the compiler.

A :class:`Member` is one endpoint of a secnet network as the plugin knows
it: its addresses and the segment its container's label (or driver-opt)
resolved to. ``segment=None`` means "not known yet"; such an endpoint
belongs to no segment and the backend drops its traffic (fail closed). A
member with a ``quarantine`` reason (e.g. an invalid label value) belongs to
no segment either and all its traffic is dropped whatever the rules say.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Iterable

from .errors import PolicyError
from .names import check_segment_name
from .options import NetworkOptions
from .rules import Rule, rule_texts, rules_not_in, unique_rules


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

    def add_rules(self, rules: Iterable[Rule]) -> "Policy":
        """The policy with ``rules`` appended (already present ones kept once).

        The new options remember the edit (``NetworkOptions.edited``): the
        compiler then works on the added rules, not on all of them."""
        old = self.rules
        merged = unique_rules(old + tuple(rules))
        if merged[: len(old)] != old:   # the old rules held duplicates: no edit to remember
            return self.with_rules(merged)
        return Policy(self.options.edited(merged, merged[len(old):], ()))

    def remove_rules(self, rules: Iterable[Rule]) -> "Policy":
        """The policy without ``rules``; a rule not in the policy is an error."""
        doomed, present = unique_rules(rules), set(rule_texts(self.rules))
        for rule in doomed:
            if rule.text() not in present:
                raise PolicyError(f"rule '{rule.text()}' is not in the policy")
        kept = tuple(rules_not_in(self.rules, set(rule_texts(doomed))))
        if len(kept) + len(doomed) == len(self.rules):   # each one was there once: an edit to remember
            return Policy(self.options.edited(kept, (), doomed))
        return self.with_rules(kept)
