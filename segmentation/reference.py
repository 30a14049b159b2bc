"""A naive reference evaluator, written straight from the contract.

It deliberately shares no logic with :mod:`segmentation.compiler`: it reads
the raw rules and options for every question and re-derives the answer, so
that the property tests (compiler ``verdict`` == ``reference_allowed``)
catch a compiler that drifts from the contract. Slow, and fine that way.
"""

from __future__ import annotations

import ipaddress

from .options import NetworkOptions


def _port_ok(proto: str, lo: int, hi: int, port: int | None) -> bool:
    """Does a rule's port range admit ``port`` (None: every port)?"""
    if proto not in ("tcp", "udp"):
        return True
    wanted = (1, 65535) if port is None else (port, port)
    return lo <= wanted[0] and wanted[1] <= hi


def _service_ok(rule, proto: str, port: int | None) -> bool:
    service = rule.service
    if service.proto == "any":
        return True
    return service.proto == proto and _port_ok(proto, service.lo, service.hi, port)


def _names_segment(endpoint, segment: str) -> bool:
    """Does a rule side name this segment (directly or through ``*``)?"""
    return (endpoint.kind == "all") or (
        endpoint.kind == "segment" and endpoint.value == segment
    )


def _names_address(endpoint, address: str) -> bool:
    """Does a rule side's CIDR contain this outside address?"""
    if endpoint.kind != "cidr":
        return False
    ip = ipaddress.ip_address(address)
    net = ipaddress.ip_network(endpoint.value)
    if ip.version != net.version:
        return False
    return int(net.network_address) <= int(ip) <= int(net.broadcast_address)


def _learned_by(rule, segment: str, address: str, learned) -> bool:
    """Did a DNS answer for ``rule``'s name give ``segment`` this address?"""
    if rule.dst.kind != "fqdn":
        return False
    return address in (learned or {}).get((segment, rule.text()), {})


def reference_allowed(options: NetworkOptions, segments, src, dst, proto, port,
                      learned=None) -> bool:
    """Is a new flow from ``src`` to ``dst`` allowed? (see compiler.verdict)"""
    if "quarantined" in (src[0], dst[0]):
        return False
    for kind, value in (src, dst):
        if kind == "segment" and value not in segments:
            raise ValueError(f"{value!r} is not a segment of the network")
    rules = options.rules
    if src[0] == "segment" and dst[0] == "segment":
        if src[1] == dst[1] and options.intra == "allow":
            return True
        return any(
            _names_segment(r.src, src[1]) and _names_segment(r.dst, dst[1])
            and _service_ok(r, proto, port)
            for r in rules
        )
    if options.internal:
        return False
    if src[0] == "segment":
        if any(
            _names_segment(r.src, src[1])
            and (_names_address(r.dst, dst[1]) or _learned_by(r, src[1], dst[1], learned))
            and _service_ok(r, proto, port)
            for r in rules
        ):
            return True
        return options.egress == "allow"
    guarding = [r for r in rules if r.src.kind == "cidr" and _names_segment(r.dst, dst[1])]
    if not guarding:
        return src[0] == "host"  # others only reach published ports
    return any(_names_address(r.src, src[1]) and _service_ok(r, proto, port) for r in guarding)
