"""Network options: ``docker network create -d secnet -o KEY=VALUE``.

Docker hands a remote driver every ``-o`` in
``Options["com.docker.network.generic"]`` as strings. secnet reads the
``secnet.*`` keys, ignores everybody else's, and refuses an unknown
``secnet.*`` key or a bad value with an :class:`OptionError` that names the
key, the value and what is allowed -- before anything touches the kernel.
A key that is not ``secnet.*`` but was plainly meant as one is refused too,
naming the option it looks like (:func:`meant_as`): ``secent.egress=deny``
ignored would leave open what the user asked to close (U26-F1).

:class:`NetworkOptions` validates itself on construction, so options read
back from the state store (``from_dict``) are checked the same way.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .errors import OptionError, RuleError
from .names import segment_name_problem
from .rules import (Rule, format_rules, parse_rule, parse_rules, rule_texts, rules_not_in, segment_mentions,
                    star_rules)

DOCKER_MTU_KEY = "com.docker.network.driver.mtu"
PREFIX = "secnet."
# option key -> NetworkOptions field
OPTION_FIELDS = {
    "secnet.segment-label": "segment_label",
    "secnet.default-segment": "default_segment",
    "secnet.allow": "rules",
    "secnet.intra": "intra",
    "secnet.egress": "egress",
    "secnet.bridge": "bridge",
    "secnet.mtu": "mtu",
    "secnet.backend": "backend",
    "secnet.mode": "mode",
}
OPTION_KEYS = tuple(OPTION_FIELDS)
FIELD_KEYS = {field: key for key, field in OPTION_FIELDS.items()}
VERDICTS = ("allow", "deny")
BACKENDS = ("nftables", "ebpf")
PLANNED_BACKENDS: tuple = ()
MODES = ("enforce", "audit")
MTU_MIN, MTU_MAX = 1280, 65535
BRIDGE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
LABEL_KEY_MAX = 255
# keys whose values are accepted in any letter case (stored lower-case)
_CASE_FREE = {
    "secnet.intra": VERDICTS,
    "secnet.egress": VERDICTS,
    "secnet.backend": BACKENDS + PLANNED_BACKENDS,
    "secnet.mode": MODES,
}


@dataclass(frozen=True)
class NetworkOptions:
    """The validated secnet options of one network (defaults = contract)."""

    segment_label: str = "secnet.segment"
    default_segment: str = "default"
    rules: tuple[Rule, ...] = ()
    intra: str = "allow"
    egress: str = "allow"
    bridge: str | None = None
    mtu: int = 1500
    backend: str = "nftables"
    mode: str = "enforce"
    internal: bool = False
    ipv6: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        _check_label_key(self.segment_label)
        problem = segment_name_problem(self.default_segment)
        if problem is not None:
            raise OptionError("secnet.default-segment", self.default_segment, problem)
        _check_rules(self.rules, self.internal)
        _check_choice("secnet.intra", self.intra, VERDICTS)
        _check_choice("secnet.egress", self.egress, VERDICTS)
        if self.bridge is not None:
            _check_bridge(self.bridge)
        _check_mtu("secnet.mtu", self.mtu)
        _check_backend(self.backend)
        _check_choice("secnet.mode", self.mode, MODES)
        for name in ("internal", "ipv6"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"NetworkOptions.{name} must be a bool")

    def named_segments(self) -> frozenset:
        """The segments the rules name (computed once per options value)."""
        return self._derived("_named", lambda: frozenset(segment_mentions(self.rules)))

    def star_rules(self) -> tuple:
        """The rules with ``*`` on a side (computed once per options value)."""
        return self._derived("_star", lambda: tuple(star_rules(self.rules)))

    def rule_text_set(self) -> frozenset:
        """The canonical texts of the rules (computed once per options value; fewer
        than the rules when a rule is there twice)."""
        return self._derived("_texts", lambda: frozenset(rule_texts(self.rules)))

    def with_rule_text_set(self, texts: frozenset) -> "NetworkOptions":
        """These options, knowing :meth:`rule_text_set` already: ``texts`` (an edit that
        made them from another value's set, without a pass over every rule)."""
        object.__setattr__(self, "_texts", texts)
        return self

    def with_derived_of(self, old: "NetworkOptions", added: tuple = (), removed: frozenset = frozenset()) \
            -> "NetworkOptions":
        """These options, made from ``old`` by appending the rules ``added`` or leaving
        out those of canonical texts ``removed``: :meth:`star_rules` carried from ``old``'s
        when it knew them (a pass over the edit's rules, not over every rule: 10,000
        rules, ~0.3 ms of the next join that brings a segment)."""
        star = old.__dict__.get("_star")
        if star is not None:
            if removed:
                star = tuple(rules_not_in(star, removed))
            object.__setattr__(self, "_star", star + tuple(star_rules(added)) if added else star)
        return self

    def _derived(self, name: str, make):
        found = self.__dict__.get(name)
        if found is None:
            found = make()
            object.__setattr__(self, name, found)
        return found

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; rules as their canonical text."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["rules"] = rule_texts(self.rules)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetworkOptions":
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored
        (NetworkOptions itself is returned as it is)."""
        if isinstance(data, NetworkOptions):
            return data
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        rules = kwargs.get("rules", ())
        if isinstance(rules, str):
            kwargs["rules"] = parse_rules(rules)
        else:
            kwargs["rules"] = tuple(parse_rule(text) for text in rules)
        return cls(**kwargs)


_NAMES = {key[len(PREFIX):] for key in OPTION_FIELDS}
_HEAD = re.compile(r"([a-z]+)[._:/ -](.+)$")


def meant_as(key: str) -> str | None:
    """The ``secnet.*`` key that ``key`` (not one) was most likely meant as, or None
    when it looks like somebody else's. Meant as ours: a bare option name
    (``egress``); ``secnet`` with another separator (``secnet_egress``); any head
    followed by an option name (``secent.egress``, ``sn.allow``); a head close to
    ``secnet`` followed by something close to an option name (``secnett.egres``;
    difflib's ratios >= 0.7 and 0.6). Docker's own keys (``com.docker.*``) never are."""
    low = str(key).strip().lower()
    if low in _NAMES:
        return PREFIX + low
    head = _HEAD.match(low)
    if head is None or low.startswith("com.docker."):
        return None
    first, rest = head.groups()
    if first == "secnet" or rest in _NAMES:
        return PREFIX + rest
    near = difflib.get_close_matches(rest, sorted(_NAMES), 1, 0.6)
    if near and difflib.get_close_matches(first, ["secnet"], 1, 0.7):
        return PREFIX + near[0]
    return None


def parse_network_options(
    generic: Mapping[str, Any] | None,
    *,
    docker_mtu: str | int | None = None,
    internal: bool = False,
    ipv6: bool = False,
) -> NetworkOptions:
    """Validate Docker's generic options (every ``-o``) into NetworkOptions.

    ``docker_mtu`` is ``com.docker.network.driver.mtu`` (taken from
    ``generic`` when not passed); ``secnet.mtu`` wins over it. ``internal``
    and ``ipv6`` are Docker's ``--internal`` and ``--ipv6``.
    """
    generic = dict(generic or {})
    if docker_mtu is None:
        docker_mtu = generic.get(DOCKER_MTU_KEY)
    kwargs: dict[str, Any] = {}
    for key, value in generic.items():
        if not str(key).lower().startswith(PREFIX):
            meant = meant_as(str(key))
            if meant is not None:
                raise OptionError.misspelt_key(str(key), meant, OPTION_KEYS)
            continue
        if key not in OPTION_FIELDS:
            raise OptionError.unknown_key(str(key), OPTION_KEYS)
        kwargs[OPTION_FIELDS[key]] = _parse_value(key, value)
    if docker_mtu not in (None, "", 0, "0"):
        mtu = _parse_mtu(DOCKER_MTU_KEY, docker_mtu)
        kwargs.setdefault("mtu", mtu)
    return NetworkOptions(**kwargs, internal=bool(internal), ipv6=bool(ipv6))


def _parse_value(key: str, value: Any) -> Any:
    """Turn one ``secnet.*`` string value into the field's type."""
    if key == "secnet.mtu":
        return _parse_mtu(key, value)
    if not isinstance(value, str):
        raise OptionError(key, value, "expected a string")
    if key == "secnet.allow":
        try:
            return parse_rules(value)
        except RuleError as err:
            raise OptionError(key, value, str(err)) from err
    choices = _CASE_FREE.get(key, ())
    return value.lower() if value.lower() in choices else value


def _parse_mtu(key: str, value: Any) -> int:
    """An MTU from a decimal string (or int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        mtu = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value):
        mtu = int(value)
    else:
        raise OptionError(key, value, f"an integer {MTU_MIN}-{MTU_MAX}")
    _check_mtu(key, mtu)
    return mtu


def _check_mtu(key: str, mtu: Any) -> None:
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX:
        raise OptionError(key, mtu, f"an integer {MTU_MIN}-{MTU_MAX}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionError(key, value, "allowed: " + ", ".join(choices))


def _check_backend(value: Any) -> None:
    allowed = "allowed: " + ", ".join(BACKENDS)
    if value in PLANNED_BACKENDS:
        raise OptionError(
            "secnet.backend", value, f"backend '{value}' is not available yet; {allowed}"
        )
    _check_choice("secnet.backend", value, BACKENDS)


def _check_label_key(value: Any) -> None:
    """A Docker label key: printable, no whitespace or '=', 1-255 chars."""
    ok = (
        isinstance(value, str)
        and 0 < len(value) <= LABEL_KEY_MAX
        and value.isprintable()
        and not any(c.isspace() or c == "=" for c in value)
    )
    if not ok:
        raise OptionError(
            "secnet.segment-label",
            value,
            f"a Docker label key: 1-{LABEL_KEY_MAX} printable characters "
            "without whitespace or '='",
        )


def _check_bridge(value: Any) -> None:
    """A Linux interface name: 1-15 of [A-Za-z0-9_.-], not '.' or '..'."""
    if not isinstance(value, str) or not BRIDGE_RE.fullmatch(value) or value in (".", ".."):
        raise OptionError(
            "secnet.bridge",
            value,
            "a Linux interface name: 1-15 letters, digits, '_', '.' or '-', "
            "not '.' or '..'",
        )


def _check_rules(rules: tuple[Rule, ...], internal: bool) -> None:
    """Rules are Rule values; an internal network has no CIDR rules."""
    kinds = set(map(type, rules))
    if not kinds <= {Rule}:
        odd = next(k for k in kinds if k is not Rule)
        raise TypeError(f"NetworkOptions.rules holds {odd.__name__}, not Rule")
    if not internal:
        return
    for rule in rules:
        if "cidr" in (rule.src.kind, rule.dst.kind) or rule.dst.kind == "fqdn":
            what = "a DNS name" if rule.dst.kind == "fqdn" else "a CIDR"
            raise OptionError(
                "secnet.allow",
                format_rules(rules),
                f"rule '{rule.text()}' names {what}, but an internal network "
                "has no traffic to or from outside",
            )
