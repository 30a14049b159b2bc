"""The values of the allow-rule grammar: :class:`Service`, :class:`Endpoint`, :class:`Rule`.

Immutable; a rule's ``text()`` is its canonical form. The grammar and the
parsers are in :mod:`segmentation.rules` (which re-exports these names).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .errors import RuleError
from .fqdn import normalize_pattern
from .names import segment_name_problem

PROTOCOLS = ("tcp", "udp", "icmp", "any")
PORT_PROTOCOLS = ("tcp", "udp")
ENDPOINT_KINDS = ("segment", "all", "cidr", "fqdn")
FQDN_OPEN, FQDN_CLOSE = "dns(", ")"
_CIDR_TO_CIDR = "both sides are CIDRs: one side must be a segment or '*'"
_CIDR_TO_FQDN = "a CIDR source and a dns(...) destination are both outside: the source must be a segment or '*'"
FQDN_SOURCE = "dns(...) is only allowed as a destination"


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Rule:
    """One allow rule: new flows from ``src`` to ``dst`` matching ``service``.

    The canonical text is computed once; it identifies the rule (two rules
    are equal exactly when their texts are), so equality and hashing cost a
    string comparison -- policies hold tens of thousands of rules. Slots, no
    ``__dict__`` (here and in Service, Endpoint): 10,000 parsed rules take
    ~1.6 MiB instead of ~4.4.
    """

    src: Endpoint
    dst: Endpoint
    service: Service = ANY
    _text: str = field(init=False, repr=False, compare=False)
    _segments: tuple = field(init=False, repr=False, compare=False)
    _star: bool = field(init=False, repr=False, compare=False)

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
            raise RuleError(text, FQDN_SOURCE)
        if self.src.kind == "cidr" and self.dst.outside:
            raise RuleError(text, outside_both(self.dst))

    def text(self) -> str:
        """Canonical text, e.g. ``web->api:tcp/8080`` or ``monitor->*``."""
        return self._text

    def segments(self) -> tuple:
        """The segments the rule names, source first (``*`` and CIDRs name none)."""
        found = self._segments
        return (self.src.value, self.dst.value) if found is None else found

    def __eq__(self, other) -> bool:
        if other.__class__ is not Rule:
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __str__(self) -> str:
        return self.text()


# the slots' setters of a frozen Rule, for the fast parser's constructor (segmentation.rulefast)
_SET_SRC, _SET_DST, _SET_SERVICE, _SET_TEXT, _SET_SEGMENTS, _SET_STAR = (
    Rule.__dict__[name].__set__ for name in ("src", "dst", "service", "_text", "_segments", "_star"))


def outside_both(dst: Endpoint) -> str:
    """The message for a CIDR source with an outside destination ``dst``."""
    return _CIDR_TO_FQDN if dst.kind == "fqdn" else _CIDR_TO_CIDR
