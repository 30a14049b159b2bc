"""Compile policy + membership into the network's :class:`PolicyMap`, and judge flows.

The compiled form is per *segment identity*, never per container: the
backends keep an address -> identity map and look up (source identity,
destination identity, protocol, port) in the policy map, so a container
joining or leaving is one element and a policy edit a set of entries
(:mod:`segmentation.policymap`).

Semantics (contract, "Allow rules"):

* east-west (segment to segment): a flow passes if an entry of the pair
  ``(src, dst)`` matches it. Rules only add. ``*`` stands for every segment
  of the network, the source's own included. ``intra=allow`` adds the
  implicit entry ``intra`` on every ``(s, s)``; ``intra=deny`` removes only
  that one -- explicit rules naming the pair still apply.
* egress (segment to outside): a CIDR-destination entry of the source
  segment allows it; so does a DNS-name entry (``dns(NAME)``) for an
  address that a DNS answer for NAME gave a container of the segment and
  that is still learned (``learned``, see :func:`verdict`); otherwise the
  egress default decides.
* ingress (outside to segment): a segment no CIDR-source rule names is
  reached as on Docker's bridge; once one names it, only those entries let
  traffic in.
* an internal network has no traffic to or from outside at all.

:func:`verdict` states these semantics for one flow. ``secnet explain``
uses it, every backend must enforce the same, and ``reference.py`` is an
independent restatement that the property tests compare against.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from .errors import PolicyError
from .fqdn import Learned
from .identities import assign
from .model import Member
from .options import NetworkOptions
from .policymap import EGRESS, INGRESS, INTRA, PolicyMap, compile_policy_map
from .protocols import FLOW_PROTOCOLS

#: the reason of a flow into or out of an --internal network (dropped in both modes)
INTERNAL = "internal network"
#: the reason of a flow to or from an address of the network's subnets that no member holds
#: (the drop log's ``not-member``): no rule names it, whatever a CIDR covers
NOT_MEMBER = "not a member of the network"


@dataclass(frozen=True)
class Verdict:
    """The fate of one flow: allowed or not, the rule and a reason."""

    allowed: bool
    origin: str | None
    reason: str
    answer: Learned | None = None   # the DNS answer behind a dns(...) rule's verdict
    also: tuple = ()                # other rules that allow the flow (``origin`` is counted first)


def policy_segments(options: NetworkOptions, members: Iterable[Member]) -> tuple[str, ...]:
    """Sorted segments: named by a rule, the default one, those with members."""
    return segments_of(options, (m.effective_segment for m in members))


def segments_of(options: NetworkOptions, live: Iterable[str | None],
                named: Iterable[str] | None = None) -> tuple[str, ...]:
    """Sorted segments: named by a rule, the default one, and ``live`` (the segments
    members are enforced in; None entries are skipped). ``named``: the segments the
    rules name, when the caller knows them (else they are found in ``options``)."""
    names = set(options.named_segments() if named is None else named)
    names.add(options.default_segment)
    names.update(live)
    names.discard(None)
    return tuple(sorted(names))


def compile_policy(options: NetworkOptions, members: Iterable[Member],
                   identities: Mapping[str, int] | None = None) -> PolicyMap:
    """The policy map of ``options`` over the network's segments.

    ``identities`` (segment -> identity) are kept where given; segments
    without one get a new one (lowest free), as an allocator would.
    """
    segments = policy_segments(options, members)
    return compile_policy_map(options, assign(identities or {}, segments))


def verdict(compiled: PolicyMap, src: tuple[str, str], dst: tuple[str, str],
            proto: str, port: int | None = None, learned: Mapping | None = None) -> Verdict:
    """Decide one new flow from ``src`` to ``dst``.

    ``src``/``dst`` are ``("segment", name)``, ``("addr", ip)`` for an
    address outside the network, ``("host", ip)`` for an address of the
    host itself (outside too, but it reaches segments that no CIDR-source
    rule names, as on Docker's bridge), or ``("quarantined", reason)``. ``proto``
    is tcp, udp or icmp; ``port`` the destination port (tcp/udp), where
    ``None`` asks about every port at once. ``learned``: ``(segment, rule
    text) -> {address: Learned}`` of the DNS answers in force now (none
    when omitted: a ``dns(...)`` rule then allows nothing). Raises
    PolicyError for a question that names no real flow.
    """
    _check_flow(compiled, src, dst, proto, port)
    for kind, reason in (src, dst):
        if kind == "quarantined":
            return Verdict(False, None, f"quarantined: {reason}")
    ids = compiled.identities
    if src[0] == "segment" and dst[0] == "segment":
        s, d = ids[src[1]], ids[dst[1]]
        return _first_match(e for e in compiled.between(s, d) if e.service.matches(proto, port))
    if compiled.internal:
        return Verdict(False, None, INTERNAL)
    if src[0] == "segment":
        return _egress_verdict(compiled, src[1], ipaddress.ip_address(dst[1]), proto, port,
                               learned or {})
    identity = ids[dst[1]]
    if identity not in compiled.ingress_restricted:
        if src[0] == "host":
            return Verdict(True, None, "the host reaches a segment no CIDR-source rule names (Docker behaviour)")
        return Verdict(False, None, "no rule allows it: from outside, a segment no CIDR-source rule "
                                    "names is reached only on its published ports (Docker behaviour)")
    address = ipaddress.ip_address(src[1])
    return _first_match(c for c in compiled.cidrs if c.direction == INGRESS and c.identity == identity
                        and _cidr_matches(c, address, proto, port))


def _cidr_matches(entry, address, proto: str, port: int | None) -> bool:
    return (address.version == entry.family and address in ipaddress.ip_network(entry.cidr)
            and entry.service.matches(proto, port))


def _egress_verdict(compiled: PolicyMap, segment: str, address, proto: str, port: int | None,
                    learned: Mapping) -> Verdict:
    """Segment to outside: CIDR entries first, then DNS names, then the egress default."""
    identity = compiled.identities[segment]
    found = _first_match(c for c in compiled.cidrs if c.direction == EGRESS and c.identity == identity
                         and _cidr_matches(c, address, proto, port))
    if found.allowed:
        return found
    for entry in sorted(f for f in compiled.fqdns if f.identity == identity):
        answer = learned.get((segment, entry.rule), {}).get(str(address))
        if answer is not None and entry.service.matches(proto, port):
            return Verdict(True, entry.rule, f"allowed by rule {entry.rule} (DNS answer for "
                           f"{answer.name})", answer)
    if compiled.settings.egress == "allow":
        return Verdict(True, None, "egress allowed (secnet.egress=allow)")
    return Verdict(False, None, "egress denied")


def _first_match(entries) -> Verdict:
    """The verdict of the first matching entry in the order the counters count a flow
    (:func:`counting_order`), explicit rules before ``intra``; ``also``: the other
    rules that allow it."""
    found = sorted(entries, key=lambda e: (e.rule == INTRA, counting_order(e), e.rule))
    if not found:
        return Verdict(False, None, "no rule allows it")
    if found[0].rule == INTRA:
        return Verdict(True, INTRA, "allowed within the segment (secnet.intra=allow)")
    also = tuple(dict.fromkeys(e.rule for e in found[1:] if e.rule not in (INTRA, found[0].rule)))
    return Verdict(True, found[0].rule, f"allowed by rule {found[0].rule}", also=also)


def counting_order(entry) -> int:
    """Where the backends count a flow that several entries allow: the entries of
    its protocol first, ``any`` last; among a segment pair's tcp/udp entries one
    port, then port ranges, then every port (nftables' pol_port, pol_range,
    pol_proto sets; the eBPF policy map's longest prefix). Ties all count it."""
    if entry.proto == "any":
        return 3
    if entry.proto == "icmp" or hasattr(entry, "cidr"):
        return 0
    if entry.lo == entry.hi:
        return 0
    return 2 if (entry.lo, entry.hi) == (0, 65535) else 1


def _check_flow(compiled: PolicyMap, src, dst, proto: str, port) -> None:
    """Refuse a question that names no real flow (PolicyError, one line)."""
    if proto not in FLOW_PROTOCOLS:
        raise PolicyError(f"unknown protocol '{proto}' (allowed: tcp, udp, icmp)")
    if port is not None and (proto == "icmp" or not 1 <= port <= 65535):
        raise PolicyError(f"invalid port {port} for {proto}")
    for kind, value in (src, dst):
        if kind == "segment" and value not in compiled.identities:
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

