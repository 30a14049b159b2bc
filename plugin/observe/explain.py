"""`secnet explain`: would policy let this flow through, and why.

The answer comes from the compiled policy the kernel enforces
(``Reconciler.compiled``) judged by ``segmentation.compiler.verdict``: the
same function the backends are tested against. This module only turns what
the user typed (container names, segment names, addresses, ``tcp/8080``)
into the flow ends ``verdict`` takes, using the daemon's saved endpoints.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from segmentation.compiler import FLOW_PROTOCOLS, INTERNAL, NOT_MEMBER, Verdict, verdict
from segmentation.errors import PolicyError, shown

from plugin.kernel.addresses import covers, link_local
from plugin.kernel.conntrack import is_host_address
from plugin.dns.views import answer_view

PENDING = "pending: the container's segment is not known yet, all its traffic is dropped"


def parse_service(text: str) -> tuple:
    """``tcp/8080`` -> ("tcp", 8080); ``icmp`` -> ("icmp", None); ``tcp`` -> every port;
    ``any`` (as in a rule) -> ("any", None): every protocol and port at once. Raises
    PolicyError (one line) for anything else; a port is ASCII digits 1-65535, as in
    the rule grammar."""
    proto, slash, port = (text or "").strip().lower().partition("/")
    if proto not in FLOW_PROTOCOLS + ("any",):
        raise PolicyError(f"unknown protocol in '{shown(text)}' (use tcp[/PORT], udp[/PORT], icmp or any)")
    if not slash:
        return proto, None
    if proto in ("icmp", "any"):
        raise PolicyError(f"{proto} takes no port: '{shown(text)}'")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise PolicyError(f"invalid port in '{shown(text)}' (1-65535)")
    return proto, int(port)


def _every_protocol(compiled, src_end: tuple, dst_end: tuple, learned) -> Verdict:
    """``any``: allowed only when tcp and udp (every port) and icmp all are; the rule is
    the first protocol's, the others' rules follow in ``also``; denied: the first
    protocol that is, named in the reason."""
    found = [(proto, verdict(compiled, src_end, dst_end, proto, None, learned)) for proto in FLOW_PROTOCOLS]
    for proto, result in found:
        if not result.allowed:
            return Verdict(False, None, f"not every protocol: {proto}: {result.reason}")
    rules = []
    for _proto, result in found:
        for rule in (result.origin, *result.also):
            if rule is not None and rule not in rules:
                rules.append(rule)
    first = found[0][1]
    return Verdict(True, rules[0] if rules else None, first.reason, first.answer, tuple(rules[1:]))


def _address(text: str) -> Optional[str]:
    try:
        return str(ipaddress.ip_address(text.strip("[]").split("%")[0]))   # (fe80::1%eth0: its zone)
    except ValueError:
        return None


def _by_address(endpoints, address: str):
    """The endpoint holding ``address``: its IPv4, IPv6 or own link-local address."""
    found = [ep for ep in endpoints if any(
        cidr and str(ipaddress.ip_interface(cidr).ip) == address for cidr in (ep.ipv4, ep.ipv6))
        or (getattr(ep, "mac", None) and link_local(ep.mac) == address)]
    return _one(found, address)


def _by_container(endpoints, name: str):
    """The endpoint of container ``name`` (or a container id prefix of 6+ characters).

    Names follow `docker rename`; two endpoints that carry one name (a stale
    one and a live one) are an error that lists both, never a guess."""
    exact = [ep for ep in endpoints if ep.container == name]
    if not exact and len(name) >= 6:
        exact = [ep for ep in endpoints if (ep.container_id or "").startswith(name.lower())]
    return _one(exact, name)


def _one(found: list, text: str):
    if len(found) > 1:
        which = "; ".join(f"endpoint {ep.id[:12]} of container {(ep.container_id or '?')[:12]}"
                          f" ({ep.container or 'unnamed'}, {(ep.ipv4 or ep.ipv6 or '').split('/')[0]})"
                          for ep in found)
        raise PolicyError(f"'{shown(text)}' names {len(found)} endpoints of this network ({which}):"
                          " one of them is stale; name the container by its id or address")
    return found[0] if found else None


def _member(ep, kind: str, text: str) -> tuple:
    """(flow end, description) of a member endpoint."""
    desc = {"input": text, "kind": kind, "container": ep.container, "segment": ep.segment,
            "ipv4": (ep.ipv4 or "").split("/")[0] or None, "ipv6": (ep.ipv6 or "").split("/")[0] or None}
    if ep.quarantine is not None:
        return ("quarantined", ep.quarantine), dict(desc, quarantined=ep.quarantine)
    if ep.segment is None:
        return ("pending", ""), dict(desc, pending=True)
    return ("segment", ep.segment), desc


KINDS = ("container", "segment")   # the explicit forms: container:NAME, segment:NAME


def resolve_end(text: str, endpoints, compiled) -> tuple:
    """(flow end for ``verdict``, description) of a container, segment or address.

    ``container:NAME`` and ``segment:NAME`` say which one is meant; a bare name
    that is both a container's (or a container id prefix) and a segment's is an
    error that lists both meanings (U13-F2), never a guess. Raises PolicyError."""
    text = (text or "").strip()
    kind, colon, name = text.partition(":")
    if colon and kind.lower() in KINDS:
        return _explicit(kind.lower(), name.strip(), text, endpoints, compiled)
    address = _address(text)
    if address is not None:
        ep = _by_address(endpoints, address)
        if ep is not None:
            return _member(ep, "address", text)
        kind = "host" if is_host_address(address) else "addr"
        return (kind, address), {"input": text, "kind": "address", "address": address, "outside": True,
                                 "host": kind == "host"}
    ep = _by_container(endpoints, text)
    if ep is not None and text in compiled.segments:
        raise PolicyError(
            f"'{shown(text)}' names both container {ep.container or ep.container_id[:12]} (segment"
            f" {ep.segment or '?'}, {(ep.ipv4 or ep.ipv6 or '').split('/')[0]}) and segment {shown(text)}"
            f" of this network: write container:{shown(text)} or segment:{shown(text)}")
    if ep is not None:
        return _member(ep, "container", text)
    if text in compiled.segments:
        return ("segment", text), {"input": text, "kind": "segment", "segment": text}
    raise PolicyError(f"'{shown(text)}' is no container, segment or address of this network"
                      f" (segments: {', '.join(compiled.segments)})")


def _explicit(kind: str, name: str, text: str, endpoints, compiled) -> tuple:
    """The end ``container:NAME`` or ``segment:NAME`` names (``text``: as typed)."""
    if kind == "segment":
        if name in compiled.segments:
            return ("segment", name), {"input": text, "kind": "segment", "segment": name}
        raise PolicyError(f"'{shown(text)}': no segment '{shown(name)}' in this network"
                          f" (segments: {', '.join(compiled.segments)})")
    ep = _by_container(endpoints, name) if name else None
    if ep is None:
        raise PolicyError(f"'{shown(text)}': no container '{shown(name)}' in this network")
    return _member(ep, "container", text)


def _hairpin(endpoints, dst_end: tuple, proto: str, port: Optional[int]):
    """(endpoint, container port) behind the published port a member reaches at host
    address ``dst_end`` (a hairpin), or None. The datapath judges such a flow as
    east-west to that endpoint on its container port (U12-F3): nftables after the
    DNAT, eBPF at the sender from its published map. Loopback is never DNAT'd for
    a container (dropped as ``invalid``). ``ep.ports``: (proto, host_ip, host port,
    container port), host_ip empty for every address, 0.0.0.0/:: for every one of its family."""
    if dst_end[0] != "host" or proto not in ("tcp", "udp") or port is None:
        return None
    address = ipaddress.ip_address(dst_end[1])
    if address.is_loopback:
        return None
    for ep in endpoints:
        for kind, host_ip, host_port, cport in getattr(ep, "ports", ()) or ():
            if str(kind).lower() != proto or int(host_port) != port:
                continue
            if covers(host_ip, str(address), lambda _a: True):
                return ep, int(cport)
    return None


def _free(end: tuple, subnets, gateways) -> bool:
    """``end`` is an address of the network's ``subnets`` that no member holds and that is
    not the host's (one of ``gateways``, or any other): the datapath drops it as ``not-member``."""
    if end[0] != "addr":
        return False
    address = ipaddress.ip_address(end[1])
    if any(address == ipaddress.ip_interface(gw).ip for gw in gateways):
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in subnets)


def explain(compiled, endpoints, src: str, dst: str, service: str, learned=None,
            mode: str = "enforce", subnets=(), gateways=()) -> dict:
    """The verdict on a new flow from ``src`` to ``dst``, with what they resolved to.

    ``learned``: the DNS answers in force, ``(segment, rule) -> {address:
    Learned}``; a ``dns(...)`` rule allows an address only when it is there,
    and the result then carries the answer (name, when learned, expiry).
    ``mode``: the network's (``enforce`` or ``audit``); in audit mode a denied
    flow passes, and the result says so (``"would_drop": true``), but for a flow
    into or out of an ``--internal`` network (dropped in both modes). A member's
    flow to a host address and port published for a member is judged as the
    datapath judges it: east-west to that member on its container port (the
    result's ``port``; ``dst["hairpin"]``: the host address and port).
    ``subnets``: the network's, ``gateways`` its gateways (CIDR strings); an address
    of the subnets that no member holds, nor the host, is denied as "not a member of the network" whatever a
    CIDR rule covers, as the datapath drops it (U26-F4).
    """
    proto, port = parse_service(service)
    src_end, src_desc = resolve_end(src, endpoints, compiled)
    dst_end, dst_desc = resolve_end(dst, endpoints, compiled)
    member = src_end[0] in ("segment", "quarantined", "pending")
    behind = _hairpin(endpoints, dst_end, proto, port) if member else None
    if behind is not None:   # a member reaching a published port of its own network
        host = {"address": dst_end[1], "port": port}
        ep, port = behind
        dst_end, dst_desc = _member(ep, "container", dst)
        dst_desc["hairpin"] = host
    if "pending" in (src_end[0], dst_end[0]):
        result = Verdict(False, None, PENDING)
        ends = [e if e[0] != "pending" else ("segment", compiled.segments[0]) for e in (src_end, dst_end)]
        verdict(compiled, ends[0], ends[1], "tcp" if proto == "any" else proto, port)  # still refuses a question that names no flow
    elif _free(src_end, subnets, gateways) or _free(dst_end, subnets, gateways):
        result = Verdict(False, None, NOT_MEMBER)
        verdict(compiled, src_end, dst_end, "tcp" if proto == "any" else proto, port)  # still refuses a question that names no flow
    elif proto == "any":
        result = _every_protocol(compiled, src_end, dst_end, learned)
    else:
        result = verdict(compiled, src_end, dst_end, proto, port, learned)
    # --internal is Docker's setting, not policy: audit mode drops what leaves or enters
    # an internal network, a quarantined or pending container's flows too (U11-F1)
    internal = compiled.internal and bool({"addr", "host"} & {src_end[0], dst_end[0]})
    if internal and mode == "audit":
        result = Verdict(False, None, INTERNAL)
    return {"allowed": result.allowed, "rule": result.origin, "also": list(result.also), "reason": result.reason,
            "proto": proto, "port": port, "src": src_desc, "dst": dst_desc,
            "answer": answer_view(result.answer), "mode": mode,
            "would_drop": mode == "audit" and not result.allowed and not internal}
