"""Compile policy + membership into a backend-neutral, per-segment form.

The compiled form is per *segment pair*, never per container pair: the
backend keeps one address set per segment and one verdict structure per
pair, so a container joining or leaving is a set-element change and never
recompiles the rules.

Semantics (contract, "Allow rules"):

* east-west (segment to segment): a flow passes if a grant of the pair
  ``(src, dst)`` matches it. Rules only add. ``*`` stands for every segment
  of the network, the source's own included. ``intra=allow`` adds the
  implicit grant ``intra`` on every ``(s, s)``; ``intra=deny`` removes only
  that one -- explicit rules naming the pair still apply.
* egress (segment to outside): a CIDR-destination grant of the source
  segment allows it; otherwise ``egress_default`` decides.
* ingress (outside to segment): a segment absent from ``ingress`` is
  reached as on Docker's bridge; once some CIDR-source rule names it, only
  those grants let traffic in.
* an internal network has no traffic to or from outside at all.

:func:`verdict` states these semantics for one flow. ``secnet explain``
uses it, and every backend must enforce the same; ``reference.py`` is an
independent restatement that the property tests compare against.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from .errors import PolicyError
from .model import Member
from .options import NetworkOptions
from .rules import ANY, Endpoint, Service

INTRA = "intra"
FLOW_PROTOCOLS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class Grant:
    """One allowance of a segment pair, from one rule (or ``intra``)."""

    service: Service
    origin: str


@dataclass(frozen=True)
class CidrGrant:
    """One allowance between a segment and an outside network."""

    cidr: str
    family: int
    service: Service
    origin: str

    def matches(self, address, proto: str, port: int | None) -> bool:
        """Does this grant allow ``proto``/``port`` to or from ``address``?"""
        network = ipaddress.ip_network(self.cidr)
        return (
            address.version == self.family
            and address in network
            and self.service.matches(proto, port)
        )


@dataclass(frozen=True)
class CompiledPolicy:
    """The whole policy of one network, per segment and segment pair."""

    segments: tuple[str, ...]
    east_west: Mapping[tuple[str, str], tuple[Grant, ...]]
    ingress: Mapping[str, tuple[CidrGrant, ...]]
    egress: Mapping[str, tuple[CidrGrant, ...]]
    egress_default: str
    internal: bool


@dataclass(frozen=True)
class Verdict:
    """The fate of one flow: allowed or not, the rule and a reason."""

    allowed: bool
    origin: str | None
    reason: str


def policy_segments(options: NetworkOptions, members: Iterable[Member]) -> tuple[str, ...]:
    """Sorted segments: named by a rule, the default one, those with members."""
    names = {options.default_segment}
    for rule in options.rules:
        names.update(e.value for e in (rule.src, rule.dst) if e.kind == "segment")
    names.update(m.effective_segment for m in members if m.effective_segment)
    return tuple(sorted(names))


def compile_policy(options: NetworkOptions, members: Iterable[Member]) -> CompiledPolicy:
    """Compile ``options`` (rules included) over the network's segments."""
    segments = policy_segments(options, members)
    east_west: dict[tuple[str, str], list[Grant]] = {}
    ingress: dict[str, list[CidrGrant]] = {}
    egress: dict[str, list[CidrGrant]] = {}
    for rule in options.rules:
        origin = rule.text()
        if rule.src.kind == "cidr":
            for dst in _expand(rule.dst, segments):
                _add(ingress, dst, _cidr_grant(rule.src, rule.service, origin))
        elif rule.dst.kind == "cidr":
            for src in _expand(rule.src, segments):
                _add(egress, src, _cidr_grant(rule.dst, rule.service, origin))
        else:
            for src in _expand(rule.src, segments):
                for dst in _expand(rule.dst, segments):
                    _add(east_west, (src, dst), Grant(rule.service, origin))
    if options.intra == "allow":
        for segment in segments:
            _add(east_west, (segment, segment), Grant(ANY, INTRA))
    return CompiledPolicy(
        segments=segments,
        east_west=_freeze(east_west),
        ingress=_freeze(ingress),
        egress=_freeze(egress),
        egress_default="deny" if options.internal else options.egress,
        internal=options.internal,
    )


def _expand(endpoint: Endpoint, segments: tuple[str, ...]) -> tuple[str, ...]:
    """The segments a segment or ``*`` endpoint stands for."""
    return segments if endpoint.kind == "all" else (endpoint.value,)


def _cidr_grant(endpoint: Endpoint, service: Service, origin: str) -> CidrGrant:
    return CidrGrant(endpoint.value, endpoint.family, service, origin)


def _add(table: dict, key, grant) -> None:
    """Append ``grant`` under ``key`` unless an identical one is there."""
    grants = table.setdefault(key, [])
    if grant not in grants:
        grants.append(grant)


def _freeze(table: dict) -> Mapping:
    """A read-only mapping of tuples, keys sorted for stable output."""
    return MappingProxyType({key: tuple(table[key]) for key in sorted(table)})


def verdict(compiled: CompiledPolicy, src: tuple[str, str], dst: tuple[str, str],
            proto: str, port: int | None = None) -> Verdict:
    """Decide one new flow from ``src`` to ``dst``.

    ``src``/``dst`` are ``("segment", name)``, ``("addr", ip)`` for an
    address outside the network, ``("host", ip)`` for an address of the
    host itself (outside too, but it reaches segments that no CIDR-source
    rule names, as on Docker's bridge), or ``("quarantined", reason)``. ``proto``
    is tcp, udp or icmp; ``port`` the destination port (tcp/udp), where
    ``None`` asks about every port at once.
    """
    _check_flow(compiled, src, dst, proto, port)
    for kind, reason in (src, dst):
        if kind == "quarantined":
            return Verdict(False, None, f"quarantined: {reason}")
    if src[0] == "segment" and dst[0] == "segment":
        grants = compiled.east_west.get((src[1], dst[1]), ())
        return _first_match(g for g in grants if g.service.matches(proto, port))
    if compiled.internal:
        return Verdict(False, None, "internal network")
    if src[0] == "segment":
        return _egress_verdict(compiled, src[1], ipaddress.ip_address(dst[1]), proto, port)
    grants = compiled.ingress.get(dst[1])
    if grants is None:
        if src[0] == "host":
            return Verdict(True, None, "the host reaches a segment no CIDR-source rule names (Docker behaviour)")
        return Verdict(False, None, "no rule allows it: from outside, a segment no CIDR-source rule "
                                    "names is reached only on its published ports (Docker behaviour)")
    address = ipaddress.ip_address(src[1])
    return _first_match(g for g in grants if g.matches(address, proto, port))


def _egress_verdict(compiled: CompiledPolicy, segment: str, address,
                    proto: str, port: int | None) -> Verdict:
    """Segment to outside: CIDR grants first, then the egress default."""
    grants = compiled.egress.get(segment, ())
    found = _first_match(g for g in grants if g.matches(address, proto, port))
    if found.allowed:
        return found
    if compiled.egress_default == "allow":
        return Verdict(True, None, "egress allowed (secnet.egress=allow)")
    return Verdict(False, None, "egress denied")


def _first_match(grants: Iterable[Grant | CidrGrant]) -> Verdict:
    for grant in grants:
        if grant.origin == INTRA:
            return Verdict(True, INTRA, "allowed within the segment (secnet.intra=allow)")
        return Verdict(True, grant.origin, f"allowed by rule {grant.origin}")
    return Verdict(False, None, "no rule allows it")


def _check_flow(compiled: CompiledPolicy, src, dst, proto: str, port) -> None:
    """Refuse a question that names no real flow (PolicyError, one line)."""
    if proto not in FLOW_PROTOCOLS:
        raise PolicyError(f"unknown protocol '{proto}' (allowed: tcp, udp, icmp)")
    if port is not None and (proto == "icmp" or not 1 <= port <= 65535):
        raise PolicyError(f"invalid port {port} for {proto}")
    for kind, value in (src, dst):
        if kind == "segment" and value not in compiled.segments:
            known = ", ".join(compiled.segments)
            raise PolicyError(f"unknown segment '{value}' (segments: {known})")
        if kind in ("addr", "host"):
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise PolicyError(f"invalid address '{value}'") from None
        elif kind not in ("segment", "quarantined", "addr", "host"):
            raise PolicyError(f"unknown kind of flow end '{kind}'")
    if src[0] in ("addr", "host") and dst[0] in ("addr", "host"):
        raise PolicyError("a flow between two outside addresses is not this network's")

