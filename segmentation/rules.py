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

import functools
import ipaddress
import itertools
import operator
import re
from dataclasses import dataclass
from typing import Iterable

from .errors import RuleError, shown
from .fqdn import normalize_pattern
from .names import segment_name_problem

PROTOCOLS = ("tcp", "udp", "icmp", "any")
PORT_PROTOCOLS = ("tcp", "udp")
ENDPOINT_KINDS = ("segment", "all", "cidr", "fqdn")
FQDN_OPEN, FQDN_CLOSE = "dns(", ")"
_ARROW_SPACES = re.compile(r"\s*->\s*")
_SEPARATORS = re.compile(r"[,;\s]+")
_DIGITS = re.compile(r"[0-9]+")
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f.:/%]+")
_CIDR_TO_CIDR = "both sides are CIDRs: one side must be a segment or '*'"
_CIDR_TO_FQDN = "a CIDR source and a dns(...) destination are both outside: the source must be a segment or '*'"
_FQDN_SOURCE = "dns(...) is only allowed as a destination"


@dataclass(frozen=True)
class Service:
    """What a rule allows: a protocol and, for tcp/udp, a port range.

    tcp/udp without ports is ``lo=0, hi=65535``; icmp and any carry no ports
    (``lo=hi=0``; the default range is normalised to that).
    """

    proto: str
    lo: int = 0
    hi: int = 65535

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.proto!r}")
        if self.proto not in PORT_PROTOCOLS:
            if (self.lo, self.hi) not in ((0, 0), (0, 65535)):
                raise ValueError(f"{self.proto} takes no ports")
            object.__setattr__(self, "lo", 0)
            object.__setattr__(self, "hi", 0)
        elif (self.lo, self.hi) != (0, 65535) and not 1 <= self.lo <= self.hi <= 65535:
            raise ValueError(f"bad port range {self.lo}-{self.hi}")

    @property
    def all_ports(self) -> bool:
        """True for a tcp/udp service without a port restriction."""
        return self.proto in PORT_PROTOCOLS and (self.lo, self.hi) == (0, 65535)

    def matches(self, proto: str, port: int | None = None) -> bool:
        """Does this service allow a flow of ``proto`` to ``port``?

        ``port=None`` for tcp/udp asks about every port: only a service that
        covers all of them matches.
        """
        if self.proto == "any":
            return True
        if self.proto != proto:
            return False
        if proto not in PORT_PROTOCOLS:
            return True
        if port is None:
            return self.lo <= 1 and self.hi == 65535
        return self.lo <= port <= self.hi

    def text(self) -> str:
        """Canonical text: ``tcp/80``, ``tcp/1000-2000``, ``tcp``, ``icmp``, ``any``."""
        if self.proto not in PORT_PROTOCOLS or self.all_ports:
            return self.proto
        if self.lo == self.hi:
            return f"{self.proto}/{self.lo}"
        return f"{self.proto}/{self.lo}-{self.hi}"


ANY = Service("any")


@dataclass(frozen=True)
class Endpoint:
    """One side of a rule: a segment, ``*`` (every segment), a CIDR outside,
    or (destinations only) ``fqdn``: the outside addresses of a DNS name.

    For ``cidr`` the value is the normalised network (``10.0.0.0/8``,
    ``2001:db8::/32``); for ``all`` it is ``*``; for ``fqdn`` the canonical
    pattern (``api.example.com``, ``*.example.org``).
    """

    kind: str
    value: str

    def __post_init__(self) -> None:
        if self.kind not in ENDPOINT_KINDS:
            raise ValueError(f"unknown endpoint kind {self.kind!r}")
        if self.kind == "all":
            object.__setattr__(self, "value", "*")
        elif self.kind == "cidr":
            if "%" in self.value:
                raise ValueError(f"a CIDR has no zone index: {self.value!r}")
            object.__setattr__(self, "value", str(ipaddress.ip_network(self.value)))
        elif self.kind == "fqdn":
            object.__setattr__(self, "value", normalize_pattern(self.value))
        elif segment_name_problem(self.value) is not None:
            raise ValueError(f"invalid segment name {self.value!r}")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The CIDR as an ``ipaddress`` network (cidr endpoints only)."""
        if self.kind != "cidr":
            raise ValueError(f"a {self.kind} endpoint has no network")
        return ipaddress.ip_network(self.value)

    @property
    def family(self) -> int:
        """4 or 6 (cidr endpoints only)."""
        return self.network.version

    @property
    def outside(self) -> bool:
        """A destination outside the network (a CIDR or a DNS name)."""
        return self.kind in ("cidr", "fqdn")

    def text(self) -> str:
        """Canonical text; IPv6 networks in brackets, names in ``dns(...)``."""
        if self.kind == "cidr" and self.family == 6:
            return f"[{self.value}]"
        if self.kind == "fqdn":
            return f"{FQDN_OPEN}{self.value}{FQDN_CLOSE}"
        return self.value


@dataclass(frozen=True)
class Rule:
    """One allow rule: new flows from ``src`` to ``dst`` matching ``service``.

    The canonical text is computed once; it identifies the rule (two rules
    are equal exactly when their texts are), so equality and hashing cost a
    string comparison -- policies hold tens of thousands of rules.
    """

    src: Endpoint
    dst: Endpoint
    service: Service = ANY

    def __post_init__(self) -> None:
        if not (isinstance(self.src, Endpoint) and isinstance(self.dst, Endpoint)):
            raise TypeError("Rule src and dst must be Endpoint values")
        if not isinstance(self.service, Service):
            raise TypeError("Rule service must be a Service")
        head = f"{self.src.text()}->{self.dst.text()}"
        text = head if self.service.proto == "any" else f"{head}:{self.service.text()}"
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_segments", tuple(e.value for e in (self.src, self.dst)
                                                    if e.kind == "segment"))
        object.__setattr__(self, "_star", self.src.kind == "all" or self.dst.kind == "all")
        if self.src.kind == "fqdn":
            raise RuleError(text, _FQDN_SOURCE)
        if self.src.kind == "cidr" and self.dst.outside:
            raise RuleError(text, _outside_both(self.dst))

    def text(self) -> str:
        """Canonical text, e.g. ``web->api:tcp/8080`` or ``monitor->*``."""
        return self._text

    def __eq__(self, other) -> bool:
        if other.__class__ is not Rule:
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __str__(self) -> str:
        return self.text()


def parse_rule(text: str) -> Rule:
    """Parse one rule; raise RuleError naming the rule and the problem."""
    found = _SIMPLE.fullmatch(text)
    if found is not None:
        rule = _simple_rule(*found.groups())
        if rule is not None:
            return rule
    rule_text = _ARROW_SPACES.sub("->", text.strip())
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
        raise RuleError(text, _FQDN_SOURCE)
    if src.kind == "cidr" and dst.outside:
        raise RuleError(text, _outside_both(dst))
    return Rule(src, dst, service)


# The common form (segment or '*' on both sides, lower-case protocol, a port or
# range): parsed by one regex and values shared between rules. Anything else,
# or anything this path finds wrong, goes the general way, which words the error.
_NAME = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62}|\*)"
_SIMPLE = re.compile(_NAME + "->" + _NAME + r"(?::(tcp|udp|icmp|any)(?:/([0-9]{1,5})(?:-([0-9]{1,5}))?)?)?")


def _simple_rule(src: str, dst: str, proto, lo, hi):
    """The rule of a match of ``_SIMPLE``, or None when the general parser must decide."""
    src_end, dst_end = _named_endpoint(src), _named_endpoint(dst)
    if src_end is None or dst_end is None:
        return None
    if proto is None:
        return Rule(src_end, dst_end, ANY)
    service = _simple_service(proto, lo, hi)
    return None if service is None else Rule(src_end, dst_end, service)


@functools.lru_cache(maxsize=4096)
def _named_endpoint(text: str):
    """``*`` or a valid segment name as an Endpoint (shared), else None."""
    if text == "*":
        return Endpoint("all", "*")
    return Endpoint("segment", text) if segment_name_problem(text) is None else None


@functools.lru_cache(maxsize=4096)
def _simple_service(proto: str, lo, hi):
    """A Service of ``proto`` and port texts (None: no ports), or None when not valid."""
    if lo is None:
        return Service(proto)
    first = int(lo)
    last = first if hi is None else int(hi)
    if proto not in PORT_PROTOCOLS or not 1 <= first <= last <= 65535:
        return None
    return Service(proto, first, last)


def _outside_both(dst: Endpoint) -> str:
    return _CIDR_TO_FQDN if dst.kind == "fqdn" else _CIDR_TO_CIDR


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


def split_rules(text: str) -> list[str]:
    """Split a rule list on ``,`` ``;`` and whitespace (``a -> b`` is one rule)."""
    return [part for part in _SEPARATORS.split(_ARROW_SPACES.sub("->", text)) if part]


def parse_rules(text: str) -> tuple[Rule, ...]:
    """Parse a rule list; duplicates are dropped, first occurrence kept."""
    return unique_rules(parse_rule(part) for part in split_rules(text))


def unique_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """``rules`` without duplicates, in first-seen order."""
    rules = list(rules)
    return tuple(dict(zip(map(_TEXT, rules), rules)).values())


# Rule-set arithmetic without a Python call per rule: policies hold tens of thousands.
_TEXT, _SEGMENTS, _STAR = (operator.attrgetter(a) for a in ("_text", "_segments", "_star"))


def rule_texts(rules: Iterable[Rule]) -> list[str]:
    """The canonical texts of ``rules``, in order."""
    return list(map(_TEXT, rules))


def rules_not_in(rules: Iterable[Rule], texts: set[str]) -> list[Rule]:
    """The rules of ``rules`` whose canonical text is not in ``texts``, in order."""
    rules = list(rules)
    return list(itertools.compress(rules, map(operator.not_, map(texts.__contains__, map(_TEXT, rules)))))


def star_rules(rules: Iterable[Rule]) -> list[Rule]:
    """The rules with ``*`` on a side (what they stand for changes with the segments)."""
    rules = list(rules)
    return list(itertools.compress(rules, map(_STAR, rules)))


def named_segments(rules: Iterable[Rule]) -> set[str]:
    """The segments that ``rules`` name (``*`` and CIDRs name none)."""
    return set(itertools.chain.from_iterable(map(_SEGMENTS, rules)))


def format_rules(rules: Iterable[Rule], sep: str = ",") -> str:
    """Canonical text of ``rules`` joined by ``sep`` (``"\\n"`` for one per line)."""
    return sep.join(rule.text() for rule in rules)
