"""The nftables side of DNS-name rules: sets with element timeouts and their lookups.

Kernel background. A learned address is an element with a timeout in one of
four sets per family, by the shape of the rule's service (a hash set is
written in about 0.1 ms, an interval set needs about 2 ms because nft reads
its elements back before a delete; most DNS rules name one port or none)::

    set fqdn4_port  { type mark . ipv4_addr . inet_proto . inet_service; flags timeout; }  # tcp/443
    set fqdn4_proto { type mark . ipv4_addr . inet_proto; flags timeout; }    # tcp, udp, icmp
    set fqdn4_any   { type mark . ipv4_addr; flags timeout; }                 # any
    set fqdn4_range { type mark . ipv4_addr . inet_proto . inet_service; flags interval, timeout; }

An element ``257 . 10.210.0.5 . 6 . 443 timeout 60s comment "api.example.com"``
lets identity 257 open tcp/443 flows to 10.210.0.5 for 60 s. ``icmp`` is
protocol 1 (IPv4) or 58 (IPv6), looked up for echo requests only (as every
``icmp`` rule; eBPF alike). The kernel removes an element when its
timeout runs out; conntrack lets the flows it admitted go on. A refresh (or
a first write) is ``add; delete; add`` in one transaction: the first ``add``
makes sure the ``delete`` finds the element (it may have expired a moment
ago), the last sets the new timeout -- nft 1.0.6 cannot change the timeout
of an element in place. Range elements are written with explicit ranges
(``6-6 . 1000-2000``): nft 1.0.6 cannot delete an interval element that was
written as a single value.

The network's ``egress`` chain (``ruleset``) looks a new flow up in these
sets, keyed by the source's identity (``meta mark``), after the CIDR egress
lookups and before the egress default: ``lookup_rules`` gives those rules,
``render_sets`` the sets. A rebuild of the network's tables keeps their
elements (``keep_script``). The DNS answers reach the daemon through
iptables' NFQUEUE target (``plugin.enforce.nftables.dnsmarks``: this kernel has no nft
``queue``).
"""
from __future__ import annotations

import math
import re
import time
from typing import Sequence

from plugin.dns.datapath import Grant
from plugin.enforce.backend import BackendError

from .runner import NftError, NftRunner, in_scratch_namespace

ADDR_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
ADDR_EXPR = {4: "ip", 6: "ip6"}
#: set kind -> (key type after the address, flags, lookup after the address)
KINDS = {
    "port": (" . inet_proto . inet_service", "timeout", " . meta l4proto . th dport"),
    "proto": (" . inet_proto", "timeout", " . meta l4proto"),
    "any": ("", "timeout", ""),
    "range": (" . inet_proto . inet_service", "interval, timeout", " . meta l4proto . th dport"),
}
L4 = {"tcp": {4: 6, 6: 6}, "udp": {4: 17, 6: 17}, "icmp": {4: 1, 6: 58}}
L4_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}
COMMENT_MAX = 120
_COMMENT_UNSAFE = re.compile(r"[^a-z0-9_.*-]")


def set_name(family: int, kind: str) -> str:
    return f"fqdn{family}_{kind}"


def kind_of(grant: Grant) -> str:
    """Which set holds ``grant``: one port, one protocol, anything, or a port range."""
    if grant.proto == "any":
        return "any"
    if grant.proto == "icmp" or (grant.lo, grant.hi) == (0, 65535):
        return "proto"
    return "port" if grant.lo == grant.hi else "range"


def render_sets(size: int) -> str:
    """The set declarations (inside a ``table`` block), at most ``size`` elements each."""
    return "".join(f"  set {set_name(fam, kind)} {{ type mark . {ADDR_TYPES[fam]}{key};"
                   f" flags {flags}; size {size}; }}\n"
                   for fam in (4, 6) for kind, (key, flags, _l) in KINDS.items())


#: what a flow must be to be looked up in a set of the kind: ``icmp`` is echo requests,
#: as in every other rule (the ``proto`` sets hold tcp, udp and icmp elements)
GUARDS = {"proto": {4: ("meta l4proto { tcp, udp } ", "icmp type echo-request "),
                    6: ("meta l4proto { tcp, udp } ", "icmpv6 type echo-request ")}}


def lookup_rules(identity_expr: str, verdict: str = "accept") -> str:
    """Rules (chain body) that give ``verdict`` to a flow to a learned address
    (``{kind}`` in it: the kind of the set that matched, as in :func:`count_chains`)."""
    return "".join(f"    {guard}{identity_expr} . {ADDR_EXPR[fam]} daddr{lookup} @{set_name(fam, kind)}"
                   f" {verdict.replace('{kind}', kind)}\n"
                   for fam in (4, 6) for kind, (_k, _f, lookup) in KINDS.items()
                   for guard in GUARDS.get(kind, {}).get(fam, ("",)))


#: set kind -> the rules of chain ``fqdn_<kind>``: the counters of the dns(...) rules
#: (``elements``' ``fq_*`` sets, by segment and service) that a flow admitted by a learned
#: address of that kind counts for; it passes whether or not one matches
COUNT_RULES = {
    "port": ("meta mark . meta l4proto . th dport @fq_port",),
    "range": ("meta mark . meta l4proto . th dport @fq_range",),
    "proto": ("meta mark . meta l4proto @fq_proto", "meta l4proto { icmp, ipv6-icmp } meta mark @fq_icmp"),
    "any": ("meta mark @fq_any",),
}


def count_chains(verdict: str) -> dict:
    """chain name -> its rules: count the flow for its DNS rule, then ``verdict``."""
    return {f"fqdn_{kind}": [f"{r} {verdict}" for r in rules] + [verdict]
            for kind, rules in COUNT_RULES.items()}


def keep_script(table: str, grants: Sequence[Grant], now: float) -> str:
    """``add element`` lines that put ``grants`` (read back before a rebuild) into
    the fresh sets of ``table``, each with the time it has left."""
    return "".join(f"add element {_target(table, g)} {{ {element(g, now)} }}\n"
                   for g in grants if g.expires > now)


def element(grant: Grant, now: float) -> str:
    """The element text of ``grant`` (key, timeout and comment)."""
    return f"{_key(grant)} timeout {max(1, math.ceil(grant.expires - now))}s comment \"{_comment(grant.name)}\""


def _key(grant: Grant) -> str:
    kind, head = kind_of(grant), f"{grant.identity} . {grant.address}"
    if kind == "any":
        return head
    number = L4[grant.proto][grant.family]
    if kind == "proto":
        return f"{head} . {number}"
    if kind == "port":
        return f"{head} . {number} . {grant.lo}"
    return f"{head} . {number}-{number} . {grant.lo}-{grant.hi}"


def _target(table: str, grant: Grant) -> str:
    return f"inet {table} {set_name(grant.family, kind_of(grant))}"


def _comment(name: str) -> str:
    return _COMMENT_UNSAFE.sub("?", name.lower())[:COMMENT_MAX]


class NftFqdnSets:
    """:class:`~plugin.dns.datapath.FqdnDatapath` on the sets of one table per network
    (``NftBackend`` delegates to it).

    ``runner``: has ``apply(script)`` (one transaction) and ``list_json(*what)``;
    ``table_of``: network id -> table name (family ``inet``).
    """

    def __init__(self, runner, table_of, clock=time.time, updates_timeout=None):
        self.runner, self.table_of, self.clock = runner, table_of, clock
        self.updates_timeout = updates_timeout   # None: ask the kernel at the first write

    def allow(self, network_id: str, grants: Sequence[Grant]) -> None:
        if self.updates_timeout is None:
            self.updates_timeout = timeout_update_works()
        now, table, lines = self.clock(), self.table_of(network_id), []
        for g in grants:
            target, text = _target(table, g), element(g, now)
            lines.append(f"add element {target} {{ {text} }}")
            if not self.updates_timeout or kind_of(g) == "range":
                lines += [f"delete element {target} {{ {_key(g)} }}", f"add element {target} {{ {text} }}"]
        if lines:
            self.runner.apply("\n".join(lines) + "\n")

    def revoke(self, network_id: str, keys: Sequence[tuple]) -> None:
        now, table, lines = self.clock(), self.table_of(network_id), []
        for identity, address, proto, lo, hi in keys:
            g = Grant(identity, address, 6 if ":" in address else 4, proto, lo, hi, now + 1)
            lines += [f"add element {_target(table, g)} {{ {element(g, now)} }}",
                      f"delete element {_target(table, g)} {{ {_key(g)} }}"]
        if lines:
            self.runner.apply("\n".join(lines) + "\n")

    def learned(self, network_id: str) -> list:
        now, table, out = self.clock(), self.table_of(network_id), []
        for family in (4, 6):
            for kind in KINDS:
                data = self.runner.list_json("set", "inet", table, set_name(family, kind))
                for obj in data.get("nftables", []):
                    for elem in (obj.get("set") or {}).get("elem", []):
                        grant = _parse_elem(family, kind, elem, now)
                        if grant is not None:
                            out.append(grant)
        return sorted(out)


def timeout_update_works() -> bool:
    """Does an ``add`` of an element already in a set give it the new timeout?
    (Checked in a namespace of its own; False when it cannot be checked.)"""
    def probe() -> bool:
        runner = NftRunner()
        runner.apply("table inet probe { set s { type ipv4_addr; flags timeout; }; }\n"
                     "add element inet probe s { 10.0.0.1 timeout 100s }\n"
                     "add element inet probe s { 10.0.0.1 timeout 300s }\n")
        data = runner.list_json("set", "inet", "probe", "s")
        (elem,) = [e for o in data["nftables"] if "set" in o for e in o["set"]["elem"]]
        return float(elem["elem"]["expires"]) > 200
    try:
        return bool(in_scratch_namespace(probe))
    except Exception:   # noqa: BLE001 (the safe way then)
        return False


def _parse_elem(family: int, kind: str, elem, now: float) -> Grant | None:
    """A Grant from one element of ``nft -j list set`` (None when it makes no sense)."""
    body = elem.get("elem", elem) if isinstance(elem, dict) else {}
    val = body.get("val") if isinstance(body, dict) else None
    fields = val.get("concat") if isinstance(val, dict) else None
    if not fields or len(fields) != {"any": 2, "proto": 3}.get(kind, 4):
        return None
    proto, lo, hi = "any", 0, 0
    if kind != "any":
        number = _range(fields[2])[0]
        proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(number)
        if proto is None:
            return None
        lo, hi = (0, 65535) if proto != "icmp" else (0, 0)
        if kind in ("port", "range"):
            lo, hi = _range(fields[3])
    expires = now + float(body.get("expires", 0))
    learned = expires - float(body.get("timeout", 0)) if body.get("timeout") else 0.0
    return Grant(int(fields[0]), str(fields[1]), family, proto, lo, hi, expires,
                 str(body.get("comment", "")), learned)


def _range(value) -> tuple:
    if isinstance(value, dict) and "range" in value:
        lo, hi = value["range"]
        return _number(lo), _number(hi)
    return _number(value), _number(value)


def _number(value) -> int:
    return L4_NAMES[value] if isinstance(value, str) and value in L4_NAMES else int(value)


class FqdnMethods:
    """``NftBackend``'s :class:`~plugin.dns.datapath.FqdnDatapath` (its ``fqdn`` sets,
    under its lock; nft errors as BackendError)."""

    def allow(self, network_id: str, grants) -> None:
        """Put learned addresses in force (element timeouts); raises BackendError."""
        with self._lock:
            try:
                self.fqdn.allow(network_id, grants)
            except NftError as exc:
                raise BackendError(str(exc)) from None

    def revoke(self, network_id: str, keys) -> None:
        """Remove learned addresses (``Grant.key`` values); absent ones are fine."""
        with self._lock:
            try:
                self.fqdn.revoke(network_id, keys)
            except NftError as exc:
                raise BackendError(str(exc)) from None

    def learned(self, network_id: str) -> list:
        """The learned addresses the kernel holds now (``Grant`` values)."""
        with self._lock:
            return self.fqdn.learned(network_id)

    def unlearn(self, network_id: str, identities) -> int:
        """Remove every learned address of ``identities`` (segment identities about to be
        freed), as the kernel holds them; how many elements. No table: 0 (nothing was
        learned there). Raises BackendError when nft refuses the deletion."""
        identities = set(identities)
        with self._lock:
            try:
                grants = self.fqdn.learned(network_id)
            except (NftError, OSError):   # no table (a create, after a host reboot)
                return 0
            doomed = [g.key for g in grants if g.identity in identities]
            if doomed:
                try:
                    self.fqdn.revoke(network_id, doomed)
                except NftError as exc:
                    raise BackendError(str(exc)) from None
            return len(doomed)
