"""The nftables side of DNS-name rules: sets with element timeouts and their lookups.

Kernel background. A learned address is an element with a timeout in one of
four maps per family, by the shape of the rule's service (a hash map is
written in about 0.1 ms, an interval map needs about 2 ms because nft reads
its elements back before a delete; most DNS rules name one port or none)::

    map fqdn4_port  { type mark . ipv4_addr . inet_proto . inet_service : mark; flags timeout; }  # tcp/443
    map fqdn4_proto { type mark . ipv4_addr . inet_proto : mark; flags timeout; }    # tcp, udp, icmp
    map fqdn4_any   { type mark . ipv4_addr : mark; flags timeout; }                 # any
    map fqdn4_range { type mark . ipv4_addr . inet_proto . inet_service : mark; flags interval, timeout; }

An element ``257 . 10.210.0.5 . 6 . 443 timeout 60s comment "api.example.com" : 3``
lets identity 257 open tcp/443 flows to 10.210.0.5 for 60 s; 3 is its *tag*, the
DNS rules that taught it (``plugin.dns.store``). The lookup sets the packet mark
to the tag (``meta mark set KEY map @fqdn4_port``: no element, no match), and chain
``fqdn_count`` counts the flow in the counter set ``fqdn_tags`` (one element per
tag, no timeout: counts outlive the addresses), which ``secnet show`` spreads to
the rules (``plugin.enforce.fqdn.learned_counters``). An ``add`` cannot change a map
element's value (EEXIST, nft 1.0.6 / this kernel: checked), so a new tag is
``add`` (the old value); ``delete``; ``add`` (the new one): ``NftFqdnSets``
remembers what it wrote (and what a read-back found). ``icmp`` is
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

from plugin.enforce.fqdn import Grant
from segmentation.policymap import FQDN_TAG_KEY
from plugin.enforce.backend import BackendError

from .runner import NftError, NftRunner, in_scratch_namespace

ADDR_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
ADDR_EXPR = {4: "ip", 6: "ip6"}
#: map kind -> (key type after the address, flags, lookup after the address)
KINDS = {
    "port": (" . inet_proto . inet_service", "timeout", " . meta l4proto . th dport"),
    "proto": (" . inet_proto", "timeout", " . meta l4proto"),
    "any": ("", "timeout", ""),
    "range": (" . inet_proto . inet_service", "interval, timeout", " . meta l4proto . th dport"),
}
L4 = {"tcp": {4: 6, 6: 6}, "udp": {4: 17, 6: 17}, "icmp": {4: 1, 6: 58}}
L4_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}
COMMENT_MAX = 120
TAGS = "fqdn_tags"   # the counter set of the tags (``fqdn`` prefix: drift and nftwatch skip it)
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
    """The map and counter set declarations (inside a ``table`` block), at most ``size``
    elements in each map."""
    return "".join(f"  map {set_name(fam, kind)} {{ type mark . {ADDR_TYPES[fam]}{key} : mark;"
                   f" flags {flags}; size {size}; }}\n"
                   for fam in (4, 6) for kind, (key, flags, _l) in KINDS.items()) + \
        f"  set {TAGS} {{ type mark; counter; }}\n"


#: what a flow must be to be looked up in a set of the kind: ``icmp`` is echo requests,
#: as in every other rule (the ``proto`` sets hold tcp, udp and icmp elements)
GUARDS = {"proto": {4: ("meta l4proto { tcp, udp } ", "icmp type echo-request "),
                    6: ("meta l4proto { tcp, udp } ", "icmpv6 type echo-request ")}}


def lookup_rules(identity_expr: str, verdict: str = "accept") -> str:
    """Rules (chain body) that give ``verdict`` to a flow to a learned address, the
    packet mark set to the element's tag (``{kind}`` in ``verdict``: the kind of the map
    that matched)."""
    return "".join(f"    {guard}meta mark set {identity_expr} . {ADDR_EXPR[fam]} daddr{lookup}"
                   f" map @{set_name(fam, kind)} {verdict.replace('{kind}', kind)}\n"
                   for fam in (4, 6) for kind, (_k, _f, lookup) in KINDS.items()
                   for guard in GUARDS.get(kind, {}).get(fam, ("",)))


def count_chains(verdict: str) -> dict:
    """chain name -> its rules: count the flow under its tag (the packet mark the
    lookup set), then ``verdict``."""
    return {"fqdn_count": [f"meta mark @{TAGS} {verdict}", verdict]}


def keep_script(table: str, grants: Sequence[Grant], now: float) -> str:
    """``add element`` lines that put ``grants`` (read back before a rebuild) into
    the fresh maps of ``table``, each with the time it has left, and their tags."""
    kept = [g for g in grants if g.expires > now]
    return "".join(f"add element {_target(table, g)} {{ {element(g, now)} }}\n" for g in kept) + \
        _tag_lines(table, kept)


def _tag_lines(table: str, grants: Sequence[Grant]) -> str:
    """``add element`` of the tags of ``grants`` to the counter set (one that is there
    keeps its counter)."""
    tags = sorted({g.tag for g in grants if g.tag})
    return f"add element inet {table} {TAGS} {{ {', '.join(map(str, tags))} }}\n" if tags else ""


def element(grant: Grant, now: float, tag: int | None = None) -> str:
    """The element text of ``grant`` (key, timeout, comment and value: its tag, or ``tag``)."""
    return (f"{_key(grant)} timeout {max(1, math.ceil(grant.expires - now))}s comment \"{_comment(grant.name)}\""
            f" : {grant.tag if tag is None else tag}")


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
    """:class:`~plugin.enforce.fqdn.FqdnDatapath` on the sets of one table per network
    (``NftBackend`` delegates to it).

    ``runner``: has ``apply(script)`` (one transaction) and ``list_json(*what)``;
    ``table_of``: network id -> table name (family ``inet``).
    """

    def __init__(self, runner, table_of, clock=time.time, updates_timeout=None):
        self.runner, self.table_of, self.clock = runner, table_of, clock
        self.updates_timeout = updates_timeout   # None: ask the kernel at the first write
        self._tags: dict = {}   # (network id, Grant.key) -> the tag written (its map value)
        self._counted: dict = {}   # network id -> tags in its counter set (learned() starts it anew)
        self._empty: set = set()   # network ids whose maps were written empty, nothing allowed since

    def written(self, network_id: str, learned: bool) -> None:
        """The network's tables were just written whole, with the ``learned`` grants kept
        or, without, with empty maps: until :meth:`allow`, :meth:`learned` need not read them
        (a new network's first DNS sight asks: ~9 listings, ~2.5 ms of CreateNetwork)."""
        (self._empty.discard if learned else self._empty.add)(network_id)

    def allow(self, network_id: str, grants: Sequence[Grant]) -> None:
        if self.updates_timeout is None:
            self.updates_timeout = timeout_update_works()
        now, table, lines = self.clock(), self.table_of(network_id), []
        self._empty.discard(network_id)
        for g in grants:
            target, text = _target(table, g), element(g, now)
            old = self._tags.get((network_id, g.key), g.tag)
            lines.append(f"add element {target} {{ {element(g, now, old)} }}")
            if not self.updates_timeout or kind_of(g) == "range" or old != g.tag:
                lines += [f"delete element {target} {{ {_key(g)} }}", f"add element {target} {{ {text} }}"]
        counted = self._counted.setdefault(network_id, set())
        new = [g for g in grants if g.tag not in counted]   # a tag's counter element: once
        if lines:
            self.runner.apply("\n".join(lines) + "\n" + _tag_lines(table, new))
        self._tags.update(((network_id, g.key), g.tag) for g in grants)
        counted.update(g.tag for g in new)

    def revoke(self, network_id: str, keys: Sequence[tuple]) -> None:
        now, table, lines = self.clock(), self.table_of(network_id), []
        for identity, address, proto, lo, hi in keys:
            g = Grant(identity, address, 6 if ":" in address else 4, proto, lo, hi, now + 1)
            old = self._tags.pop((network_id, g.key), 0)
            lines += [f"add element {_target(table, g)} {{ {element(g, now, old)} }}",
                      f"delete element {_target(table, g)} {{ {_key(g)} }}"]
        if lines:
            self.runner.apply("\n".join(lines) + "\n")

    def forget(self, network_id: str) -> None:
        """The network is gone (its table with it): forget the tags written there."""
        for key in [k for k in self._tags if k[0] == network_id]:
            del self._tags[key]
        self._counted.pop(network_id, None)
        self._empty.discard(network_id)

    def learned(self, network_id: str) -> list:
        """The grants the maps hold (before a rebuild: ``keep_script`` puts them and their
        tags back; the counter set's other tags are gone then, so they count as unwritten).
        None, unread, for maps written empty with nothing allowed since (:meth:`written`)."""
        now, table, out = self.clock(), self.table_of(network_id), []
        counted = self._counted[network_id] = set()
        if network_id in self._empty:
            return out
        for family in (4, 6):
            for kind in KINDS:
                data = _list_either(self.runner, table, set_name(family, kind))
                for obj in data.get("nftables", []):
                    for elem in (obj.get("map") or obj.get("set") or {}).get("elem", []):
                        grant = _parse_elem(family, kind, elem, now)
                        if grant is not None:
                            out.append(grant)
                            self._tags[(network_id, grant.key)] = grant.tag
                            counted.add(grant.tag)
        return sorted(out)


def tag_counters(runner, table: str) -> dict:
    """``{(FQDN_TAG_KEY, tag): (packets, bytes)}`` of the counter set ``fqdn_tags`` of
    ``table`` (the flows learned elements admitted, by the tag of the rules that taught
    them); empty when the table has none (a table of FORMAT 9). Counters at zero left out."""
    try:
        data = runner.list_json("set", "inet", table, TAGS)
    except NftError:
        return {}
    out = {}
    for obj in data.get("nftables", []):
        for elem in (obj.get("set") or {}).get("elem", []):
            body = elem.get("elem", {}) if isinstance(elem, dict) else {}
            counter = body.get("counter") or {}
            if isinstance(body.get("val"), int) and counter.get("packets"):
                out[(FQDN_TAG_KEY, body["val"])] = (counter["packets"], counter.get("bytes", 0))
    return out


def _list_either(runner, table: str, name: str) -> dict:
    """``nft -j list map`` of ``name``; of the set, in a table of FORMAT 9 (before tags)."""
    try:
        return runner.list_json("map", "inet", table, name)
    except NftError:
        return runner.list_json("set", "inet", table, name)


def timeout_update_works() -> bool:
    """Does an ``add`` of an element already in a set give it the new timeout?
    (Checked in a namespace of its own; False when it cannot be checked.)"""
    def probe() -> bool:
        runner = NftRunner()
        try:
            runner.apply("table inet probe { set s { type ipv4_addr; flags timeout; }; }\n"
                         "add element inet probe s { 10.0.0.1 timeout 100s }\n"
                         "add element inet probe s { 10.0.0.1 timeout 300s }\n")
            data = runner.list_json("set", "inet", "probe", "s")
        finally:
            runner.close()   # its socket would keep the scratch namespace
        (elem,) = [e for o in data["nftables"] if "set" in o for e in o["set"]["elem"]]
        return float(elem["elem"]["expires"]) > 200
    try:
        return bool(in_scratch_namespace(probe))
    except Exception:   # noqa: BLE001 (the safe way then)
        return False


def _parse_elem(family: int, kind: str, elem, now: float) -> Grant | None:
    """A Grant from one element of ``nft -j list map`` (``[key, tag]``; a set's element,
    as a table of FORMAT 9 had: tag 0), None when it makes no sense."""
    tag = 0
    if isinstance(elem, list) and len(elem) == 2:
        elem, tag = elem[0], (elem[1] if isinstance(elem[1], int) else 0)
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
                 str(body.get("comment", "")), learned, tag)


def _range(value) -> tuple:
    if isinstance(value, dict) and "range" in value:
        lo, hi = value["range"]
        return _number(lo), _number(hi)
    return _number(value), _number(value)


def _number(value) -> int:
    return L4_NAMES[value] if isinstance(value, str) and value in L4_NAMES else int(value)


class FqdnMethods:
    """``NftBackend``'s :class:`~plugin.enforce.fqdn.FqdnDatapath` (its ``fqdn`` sets,
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
