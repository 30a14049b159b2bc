"""The allow-rule grammar (contract: "Allow rules").

::

    RULE  := SRC "->" DST [ ":" PROTO [ "/" PORTS ] ]
    SRC   := SEGMENT | "*" | CIDR
    DST   := SEGMENT | "*" | CIDR | FQDN
    FQDN  := "dns(" NAME ")"                       (NAME: a DNS name or "*." NAME)
    PROTO := "tcp" | "udp" | "icmp" | "any"        (missing: any)
    PORTS := PORT | PORT "-" PORT                  (1-65535, tcp/udp only)

A CIDR is written with its prefix (a bare address means /32 or /128) and
must have no host bits set; IPv6 CIDRs are written in brackets,
``web->[2001:db8::/32]:tcp/443``. A ``dns(NAME)`` destination is outside the
network too: the addresses DNS answers gave the source's containers for
NAME (:mod:`segmentation.fqdn`). Rules are parsed into immutable values
whose ``text()`` is the canonical form, so ``parse_rule(r.text()) == r``.
"""

from __future__ import annotations

import ipaddress
import itertools
import operator
import re
from typing import Iterable, Mapping, Optional

from .errors import RuleError, shown
from .names import segment_name_problem
from .rulefast import fast_rule, fast_rules
from .rulevalues import (  # noqa: F401 (re-exported: the grammar's values live there)
    ANY, ENDPOINT_KINDS, FQDN_CLOSE, FQDN_OPEN, FQDN_SOURCE, PORT_PROTOCOLS, PROTOCOLS,
    Endpoint, Rule, Service, outside_both,
)

_ARROW_SPACES = re.compile(r"\s*->\s*")
# an arrow with whitespace after or before it; starting with the literal ``->``, the search
# skips to each arrow (``\s->|->\s`` tried every position: 3 ms over a 10,000-rule set's text)
_SPACED_ARROW = re.compile(r"->(?:\s|(?<=\s->))")
# whitespace on one side of an arrow only (``web-> api``, ``web ->api``): whitespace
# separates rules, so which rule was meant is a guess; the text around it, for the message
_ONE_SIDED_ARROW = re.compile(r"[^\s,;]*(?:(?<=\S)->\s+|\s+->(?=\S))[^\s,;]*")
_SEPARATORS = re.compile(r"[,;\s]+")
_DIGITS = re.compile(r"[0-9]+")
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f.:/%]+")


def parse_rule(text: str) -> Rule:
    """Parse one rule; raise RuleError naming the rule and the problem."""
    rule = fast_rule(text)
    return rule if rule is not None else _parse_general(text)


def _parse_general(text: str) -> Rule:
    """Parse one rule that is not in the fast path's common form."""
    rule_text = _join_arrows(text.strip())
    if not rule_text:
        raise RuleError(text, "empty rule")
    if len(rule_text.split()) != 1:
        raise RuleError(text, "unexpected whitespace inside the rule")
    arrows = rule_text.count("->")
    if arrows == 0:
        raise RuleError(text, "missing '->' between source and destination")
    if arrows > 1:
        raise RuleError(text, "more than one '->'")
    src_text, rest = rule_text.split("->")
    dst_text, service_text = _split_destination(text, rest)
    src = _parse_endpoint(text, src_text, "source")
    dst = _parse_endpoint(text, dst_text, "destination")
    service = ANY if service_text is None else _parse_service(text, service_text)
    if src.kind == "fqdn":
        raise RuleError(text, FQDN_SOURCE)
    if src.kind == "cidr" and dst.outside:
        raise RuleError(text, outside_both(dst))
    return Rule(src, dst, service)


def _split_destination(rule: str, rest: str) -> tuple[str, str | None]:
    """Split ``DST[:SERVICE]``; the service part is None when absent."""
    for opener, closer in (("[", "]"), (FQDN_OPEN, FQDN_CLOSE)):
        if rest[: len(opener)].lower() == opener:
            return _split_closed(rule, rest, closer)
    for candidate in (rest, rest.rsplit(":", 1)[0]):
        if candidate.count(":") >= 2 and _parse_network(candidate) is not None:
            raise RuleError(rule, _bracket_hint(candidate))
    if ":" not in rest:
        return rest, None
    dst, service = rest.split(":", 1)
    return dst, service


def _split_closed(rule: str, rest: str, closer: str) -> tuple[str, str | None]:
    """Split ``[CIDR][:SERVICE]`` or ``dns(NAME)[:SERVICE]`` after the closing character."""
    end = rest.find(closer)
    if end < 0:
        what = "'['" if closer == "]" else "'dns('"
        raise RuleError(rule, f"{what} without a closing '{closer}' in the destination")
    dst, tail = rest[: end + 1], rest[end + 1 :]
    if tail and not tail.startswith(":"):
        raise RuleError(rule, f"unexpected '{shown(tail)}' after the destination")
    return dst, (tail[1:] if tail else None)


def _bracket_hint(text: str) -> str:
    """The message for an IPv6 CIDR written without brackets."""
    return f"IPv6 CIDR '{shown(text)}' must be written in brackets: [{shown(text)}]"


def _parse_network(text: str):
    """``text`` as a network (bare address = host network), or None."""
    if not _ADDRESS_CHARS.fullmatch(text):   # a letter beyond a-f: a name (fast path)
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _parse_endpoint(rule: str, text: str, side: str) -> Endpoint:
    """Parse SRC or DST; ``side`` ('source'/'destination') is for messages."""
    if text == "":
        raise RuleError(rule, f"missing {side}")
    if text == "*":
        return Endpoint("all", "*")
    if text[: len(FQDN_OPEN)].lower() == FQDN_OPEN:
        return _parse_fqdn(rule, text, side)
    if text.startswith("[") or text.endswith("]"):
        return _parse_bracketed(rule, text, side)
    if "/" in text or ":" in text or _parse_network(text) is not None:
        network = _parse_cidr(rule, text, side)
        if network.version == 6:
            raise RuleError(rule, _bracket_hint(text))
        return Endpoint("cidr", str(network))
    problem = segment_name_problem(text)
    if problem is not None:
        raise RuleError(
            rule, f"{side} '{shown(text)}' is not a segment name, '*' or a CIDR ({problem})"
        )
    return Endpoint("segment", text)


def _parse_fqdn(rule: str, text: str, side: str) -> Endpoint:
    """Parse ``dns(NAME)``."""
    if not text.endswith(FQDN_CLOSE):
        raise RuleError(rule, f"{side} '{shown(text)}' has no closing ')'")
    name = text[len(FQDN_OPEN): -len(FQDN_CLOSE)]
    try:
        return Endpoint("fqdn", name)
    except ValueError as err:
        raise RuleError(rule, f"invalid DNS name '{shown(name)}' in {side}: {err}") from None


def _parse_bracketed(rule: str, text: str, side: str) -> Endpoint:
    """Parse ``[IPv6-CIDR]``."""
    if not (text.startswith("[") and text.endswith("]")) or len(text) < 3:
        raise RuleError(rule, f"{side} '{shown(text)}' has unbalanced brackets")
    network = _parse_cidr(rule, text[1:-1], side)
    if network.version == 4:
        raise RuleError(
            rule, f"IPv4 CIDR '{network}' must be written without brackets"
        )
    return Endpoint("cidr", str(network))


def _parse_cidr(rule: str, text: str, side: str):
    """Parse a CIDR strictly: a prefix is optional, host bits are not."""
    if "%" in text:
        raise RuleError(rule, f"{side} '{shown(text)}' has a zone index ('%')")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    loose = _parse_network(text)
    if loose is None and "/" in text:
        raise RuleError(rule, f"{side} '{shown(text)}' is not a valid CIDR")
    if loose is None:
        raise RuleError(
            rule, f"{side} '{shown(text)}' is not a segment name, '*' or a CIDR"
        )
    raise RuleError(
        rule, f"host bits set in {side} '{shown(text)}' (did you mean {loose}?)"
    )


def _parse_service(rule: str, text: str) -> Service:
    """Parse ``PROTO[/PORTS]``."""
    if text == "":
        raise RuleError(rule, "missing protocol after ':'")
    proto, slash, ports = text.partition("/")
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise RuleError(
            rule,
            f"unknown protocol '{shown(proto)}' (allowed: {', '.join(PROTOCOLS)})",
        )
    if not slash:
        return Service(proto)
    if proto not in PORT_PROTOCOLS:
        raise RuleError(rule, f"ports are only allowed with tcp or udp, not {proto}")
    if ports == "":
        raise RuleError(rule, "missing port after '/'")
    lo_text, dash, hi_text = ports.partition("-")
    lo = _parse_port(rule, lo_text)
    hi = _parse_port(rule, hi_text) if dash else lo
    if lo > hi:
        raise RuleError(rule, f"port range {lo}-{hi} is reversed (low port first)")
    return Service(proto, lo, hi)


def _parse_port(rule: str, text: str) -> int:
    """One port number, 1-65535."""
    if not _DIGITS.fullmatch(text):
        raise RuleError(rule, f"invalid port '{shown(text)}' (a number 1-65535)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise RuleError(rule, f"port {port} out of range 1-65535")
    return port


def _join_arrows(text: str) -> str:
    """``text`` with ``a -> b`` written ``a->b``; RuleError when an arrow has whitespace
    on one side only (``web-> api``: one rule ``web->api``, or ``web->`` and ``api``?)."""
    one_sided = _ONE_SIDED_ARROW.search(text)
    if one_sided:
        raise RuleError(one_sided.group(0), "whitespace on one side of '->' only (whitespace "
                        "separates rules): write SRC->DST, or SRC -> DST")
    return _ARROW_SPACES.sub("->", text)


def split_rules(text: str) -> list[str]:
    """Split a rule list on ``,`` ``;`` and whitespace (``a -> b`` is one rule; an
    arrow with whitespace on one side only is a RuleError naming that text)."""
    if _SPACED_ARROW.search(text):
        text = _join_arrows(text)
    if "," in text or ";" in text:
        return [part for part in _SEPARATORS.split(text) if part]
    return text.split()   # the same parts: str.split and \s agree on whitespace


def parse_rules(text: str, known: Optional[Mapping[str, Rule]] = None,
                in_force: Optional[tuple] = None) -> tuple[Rule, ...]:
    """Parse a rule list; duplicates are dropped, first occurrence kept. ``known``:
    rules by canonical text (those in force): a part that is the text of one of them
    is that rule, not parsed again (a policy file re-applied with a few rules changed
    parses only those). ``in_force``: instead of ``known``, ``(rules, the set of their
    canonical texts)``; the mapping is made only when most parts are among the texts
    (a set of new rules then costs a few lookups, not a dict of the rules in force:
    ~1 ms at 10,000). Raises PolicyError naming the first bad rule."""
    parts = split_rules(text)
    if known is None and in_force is not None and in_force[0] and _mostly_known(parts, in_force[1]):
        known = dict(zip(rule_texts(in_force[0]), in_force[0]))
    if known and _mostly_known(parts, known):
        rules = list(map(known.get, parts))
    else:
        rules = fast_rules(parts)
    for i, rule in enumerate(rules):
        if rule is None:   # not known, or not the fast path's form: the general parser words errors
            rules[i] = fast_rule(parts[i]) or _parse_general(parts[i])
    return unique_rules(rules)


def _mostly_known(parts: list, known, samples: int = 8) -> bool:
    """Whether most of ``samples`` parts spread over ``parts`` are in ``known`` (a mapping
    or set of texts; a set that replaces every rule then costs a few lookups, not one
    per part)."""
    step = max(1, len(parts) // samples)
    picked = parts[::step]
    return sum(map(known.__contains__, picked)) * 2 > len(picked)


def unique_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """``rules`` without duplicates, in first-seen order."""
    rules = list(rules)
    return tuple(dict(zip(map(_TEXT, rules), rules)).values())


# Rule-set arithmetic without a Python call per rule: policies hold tens of thousands.
_TEXT, _STAR, _SEGMENTS, _SRC, _DST = (operator.attrgetter(a) for a in (
    "_text", "_star", "_segments", "src.value", "dst.value"))


def rule_texts(rules: Iterable[Rule]) -> list[str]:
    """The canonical texts of ``rules``, in order."""
    return list(map(_TEXT, rules))


def rules_not_in(rules: Iterable[Rule], texts: set[str]) -> list[Rule]:
    """The rules of ``rules`` whose canonical text is not in ``texts``, in order."""
    rules = list(rules)
    return list(itertools.compress(rules, map(operator.not_, map(texts.__contains__, map(_TEXT, rules)))))


_FEW = 16   # texts: up to this many are found by position in :func:`rules_without`


def rules_without(rules: tuple, texts: set[str]) -> tuple:
    """``rules`` (a tuple) without the rules of canonical ``texts``, in order, when each of
    ``texts`` is there exactly once (a policy's rules, no duplicates). A few texts are
    found by position (one list of texts and a search in C: ~0.4 ms at 10,000 rules,
    against ~1 ms for :func:`rules_not_in`'s test of every rule); more go through it.
    Raises ValueError when a text is not there (the caller checked)."""
    if len(texts) > _FEW:
        return tuple(rules_not_in(rules, texts))
    at = sorted(map(list(map(_TEXT, rules)).index, texts))
    pieces, start = [], 0
    for i in at:
        pieces.append(rules[start:i])
        start = i + 1
    pieces.append(rules[start:])
    return pieces[0] + pieces[1] if len(pieces) == 2 else tuple(itertools.chain.from_iterable(pieces))


def star_rules(rules: Iterable[Rule]) -> list[Rule]:
    """The rules with ``*`` on a side (what they stand for changes with the segments)."""
    rules = list(rules)
    return list(itertools.compress(rules, map(_STAR, rules)))


def named_segments(rules: Iterable[Rule]) -> set[str]:
    """The segments that ``rules`` name (``*`` and CIDRs name none)."""
    return set(segment_mentions(rules))


def segment_mentions(rules: Iterable[Rule]) -> Iterable[str]:
    """The segments that ``rules`` name, once per mention (``a->a`` twice; in no
    particular order). A rule between two segments keeps no tuple of them (its
    ``_segments`` is None): their names are read from its ends."""
    rules = list(rules)
    kept = list(map(_SEGMENTS, rules))
    both = list(itertools.compress(rules, map(operator.is_, kept, itertools.repeat(None))))
    return itertools.chain(map(_SRC, both), map(_DST, both), itertools.chain.from_iterable(filter(None, kept)))


def format_rules(rules: Iterable[Rule], sep: str = ",") -> str:
    """Canonical text of ``rules`` joined by ``sep`` (``"\\n"`` for one per line)."""
    return sep.join(rule.text() for rule in rules)
