"""The elements of a network's nft sets and maps, computed from neutral data (pure).

The nftables datapath is a fixed ruleset whose behaviour comes from set and
map elements (see ``ruleset``). This module turns a
:class:`~segmentation.policymap.PolicyMap` and the network's
:class:`~plugin.enforce.backend.Port` values into those elements, and the
difference between two states into an :class:`ElementDelta`. It imports no
nft code and runs no command: unit tests check it without a kernel.

An element is a tuple of canonical field values, one per field of the set's
key (``SCHEMAS``): ints for marks (identities), protocols, ports and raw
payloads, strings for addresses, interface names and MACs. In an interval
set (``flags interval``) every field is an inclusive ``(lo, hi)`` pair
(addresses as ints). A map element has a value tuple as well.

Interval sets of concatenations reject an element that overlaps another
one ("File exists"), and several rules may cover the same ports, so the
pieces of one group (e.g. one ``(src, dst, proto)``) are cut into disjoint
boxes (:func:`disjoint`), each attributed to every rule covering it: the
per-element counters then map back to rules. A delta recomputes only the
groups that the changed entries belong to.
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from segmentation.identities import QUARANTINED
from segmentation.policymap import EGRESS, PolicyEntry
from segmentation.protocols import ANY, FLOW, ICMP

from plugin.kernel.addresses import host_families, is_wildcard, link_local

from . import portgroups

# --- set schemas ----------------------------------------------------------------------------
#: set name -> (family, key field kinds, value field kinds or None, interval)
SCHEMAS: dict = {}


def _schema(family: str, name: str, key: tuple, value: Optional[tuple] = None,
            interval: bool = False) -> None:
    SCHEMAS[name] = (family, key, value, interval)


_schema("inet", "id4", ("ip4",), ("mark",))
_schema("inet", "id6", ("ip6",), ("mark",))
_schema("inet", "pol_port", ("mark", "mark", "proto", "port"))
#: the counters of ``pol_port``'s elements: a dynamic set of the same key that the datapath
#: fills with a flow's first packet (``ruleset._policy_chains``), not a counter per element
#: of ``pol_port`` (see :data:`COUNTED_IN`)
_schema("inet", "hit_port", ("mark", "mark", "proto", "port"))
_schema("inet", "pol_range", ("mark", "mark", "proto", "port"), interval=True)
_schema("inet", "pol_proto", ("mark", "mark", "proto"))
_schema("inet", "pol_icmp", ("mark", "mark"))
_schema("inet", "pol_any", ("mark", "mark"))
for _fam in (4, 6):
    _ip = f"ip{_fam}"
    _schema("inet", f"eg{_fam}", ("mark", _ip, "proto", "port"), interval=True)
    _schema("inet", f"eg{_fam}_icmp", ("mark", _ip), interval=True)
    _schema("inet", f"eg{_fam}_any", ("mark", _ip), interval=True)
    _schema("inet", f"in{_fam}", (_ip, "mark", "proto", "port"), interval=True)
    _schema("inet", f"in{_fam}_icmp", (_ip, "mark"), interval=True)
    _schema("inet", f"in{_fam}_any", (_ip, "mark"), interval=True)
    _schema("inet", f"pub{_fam}", (_ip, "proto", "port"), (_ip, "port"), interval=True)
#: each member address ``a`` as ``a . a`` (a container's, its link-local one too; not the
#: gateway's): the forward chain's test that an ICMP error's outer source, a member, is an
#: end of the flow it quotes (nft compares two packet fields only through a set, U23-F3)
_schema("inet", "self4", ("ip4", "ip4"))
_schema("inet", "self6", ("ip6", "ip6"))
_schema("inet", "restricted", ("mark",))
for _name in ("egress_allow", "internal", "audit"):
    _schema("inet", _name, ("zero",))
for _name in ("veths", "ports", "quarantined"):
    _schema("bridge", _name, ("ifname",))
_schema("bridge", "macs", ("ifname", "mac"))
_schema("bridge", "ids4", ("ifname", "mac", "ip4"))
_schema("bridge", "ids6", ("ifname", "mac", "ip6"))
_schema("bridge", "na6", ("ifname", "raw"))
_schema("bridge", "arp4", ("ifname", "ip4"))   # a port's own IPv4 (ARP requests meant for it)
_schema("bridge", "ll6", ("ifname", "ip6"))
_schema("bridge", "baudit", ("zero",))
_schema("bridge", "pid", ("ifname",), ("mark",))   # group_copy: an enforced port's identity,
_schema("bridge", "pidk", ("ifname", "mark"))       # the same as a set;
_schema("bridge", "intra", ("mark",))               # segments with an (s, s, any) entry
for _name in ("drops", "audits"):   # dynamic: filled by the kernel (see drops.py)
    _schema("inet", _name, ("mark", "mark"))
for _name in ("gdrops", "gaudits"):   # the same, of the bridge table's group copies
    _schema("bridge", _name, ("mark", "ifname"))
_schema("bridge", "iaudits4", ("ifname", "ip4"))   # the same, of inactive containers' would-drops
_schema("bridge", "iaudits6", ("ifname", "ip6"))

_INTERVAL = {name: schema[3] for name, schema in SCHEMAS.items()}
POLICY_SETS = ("pol_port", "pol_range", "pol_proto", "pol_icmp", "pol_any") + tuple(
    f"{d}{f}{k}" for d in ("eg", "in") for f in (4, 6) for k in ("", "_icmp", "_any"))
#: policy sets whose elements carry no counter: their elements are counted in the named
#: dynamic set, which holds an element (with its counter) only once a packet matched one. A
#: per-element counter is a per-CPU allocation in the kernel for every element added: a
#: ``policy set`` of 10,000 rules spent ~35 % of its transaction on them (bench/results/
#: 2026-12-01-pset.md); a hit set pays it per rule that sees traffic, in the datapath.
COUNTED_IN = {"pol_port": "hit_port"}
HIT_SETS = tuple(COUNTED_IN.values())
#: a set of :data:`COUNTED_IN` is flushed (and what stays added back) when it keeps at most
#: one element per this many deleted: an add costs the kernel more than a deletion
KEPT_PER_DELETED = 4
#: elements of a hit set (as the drop pair sets): beyond it a rule's first hit passes
#: uncounted. The size is the kernel's hint for its initial table (MemFree over 20 tables:
#: ~0.5 MiB a network at 65,536, ~1.1 MiB at 262,144)
HIT_SET_SIZE = 65536
SETTING_SETS = ("restricted", "egress_allow", "internal", "audit", "baudit", "intra")
PORT_SETS = ("id4", "id6", "self4", "self6", "pub4", "pub6", "veths", "ports", "quarantined", "macs", "ids4", "ids6",
             "na6", "ll6", "arp4", "pid", "pidk")
ON = (0,)          # the one element of a setting set that is "on"
FULL = (0, 65535)


# --- neutral data -> elements ---------------------------------------------------------------
_NUMBERS = {name: l4.number4 for name, l4 in FLOW.items()}


def entry_group(entry) -> tuple:
    """(set name, group) of a policy-map entry: entries of one group are cut together."""
    if entry.__class__ is PolicyEntry:
        src, dst, proto, lo, hi, _rule = entry
        if proto == ANY:
            return "pol_any", (src, dst)
        if proto == "icmp":
            return "pol_icmp", (src, dst)
        number = _NUMBERS[proto]
        if lo == hi:
            return "pol_port", (src, dst, number, lo)
        if lo == 0 and hi == 65535:
            return "pol_proto", (src, dst, number)
        return "pol_range", (src, dst, number)
    base = f"{'eg' if entry.direction == EGRESS else 'in'}{entry.family}"
    if entry.proto == ANY:
        return base + "_any", (entry.identity,)
    if entry.proto == ICMP.name:
        return base + "_icmp", (entry.identity,)
    return base, (entry.identity, FLOW[entry.proto].number4)


def attribution_key(entry):
    """What Counters.allowed is keyed by: the entry's ``key`` (PolicyEntry or CidrEntry)."""
    return entry.key


def _cidr_range(cidr: str) -> tuple:
    net = ipaddress.ip_network(cidr)
    return int(net.network_address), int(net.broadcast_address)


def _box(name: str, group: tuple, entry) -> tuple:
    """The box (one (lo, hi) per cut dimension) an entry covers in its group."""
    if name == "pol_range":
        return ((entry.lo, entry.hi),)
    if name.endswith(("_any", "_icmp")):
        return (_cidr_range(entry.cidr),)
    return (_cidr_range(entry.cidr), (entry.lo, entry.hi))


def _element(name: str, group: tuple, box: tuple) -> tuple:
    """The set element of one disjoint box of a group."""
    if name == "pol_range":
        src, dst, proto = group
        return ((src, src), (dst, dst), (proto, proto), box[0])
    ident = (group[0], group[0])
    if name.endswith(("_any", "_icmp")):
        return (ident, box[0]) if name.startswith("eg") else (box[0], ident)
    proto = (group[1], group[1])
    if name.startswith("eg"):
        return (ident, box[0], proto, box[1])
    return (box[0], ident, proto, box[1])


def group_elements(name: str, group: tuple, entries: Iterable) -> dict:
    """element -> frozenset of attribution keys, for the entries of one group."""
    entries = list(entries)
    if not entries:
        return {}
    if not SCHEMAS[name][3]:
        return {group: frozenset(attribution_key(e) for e in entries)}
    boxes = [(_box(name, group, e), attribution_key(e)) for e in entries]
    return {_element(name, group, box): labels for box, labels in disjoint(boxes).items()}


def disjoint(boxes: list) -> dict:
    """Cut possibly overlapping boxes into disjoint ones that cover the same points.

    ``boxes``: ``[(((lo, hi), ...), label), ...]`` with inclusive bounds, all
    of one dimension count. Returns ``{box: frozenset(labels covering it)}``;
    adjacent pieces covered by the same labels (in every further dimension)
    are merged, so a box that overlaps nothing comes back unchanged.
    """
    if not boxes:
        return {}
    if not boxes[0][0]:
        return {(): frozenset(label for _b, label in boxes)}
    cuts = sorted({box[0][0] for box, _l in boxes} | {box[0][1] + 1 for box, _l in boxes})
    pieces: list = []   # [(lo, hi, {rest: labels})]
    for lo, nxt in zip(cuts, cuts[1:]):
        active = [(box[1:], label) for box, label in boxes if box[0][0] <= lo and nxt - 1 <= box[0][1]]
        if not active:
            continue
        rest = disjoint(active)
        if pieces and pieces[-1][1] == lo - 1 and pieces[-1][2] == rest:
            pieces[-1] = (pieces[-1][0], nxt - 1, rest)
        else:
            pieces.append((lo, nxt - 1, rest))
    return {((lo, hi),) + sub: labels for lo, hi, rest in pieces for sub, labels in rest.items()}


# --- the state of a network's sets -----------------------------------------------------------
@dataclass
class ElementDelta:
    """Elements to delete and add, per set: ``{set: {element: value or None}}``; deletions
    come first in the transaction (a piece cut anew is deleted before its successors are added).
    ``flush``: sets of ``delete`` that lose every element (a ``policy set`` replacing every rule),
    emptied by the netlink writer with one flush (kernel ~0.91x at 10,000: ``bench.nft_swap``).
    ``kept``: ``{set: {element: None}}`` of a flushed set's elements that stay (neither in
    ``delete`` nor in ``add``): the writer adds them back after the flush, in the same
    transaction. Only a set whose elements carry no counter (:data:`COUNTED_IN`) is flushed
    with elements kept (their counts are in its hit set), and only when few stay
    (:data:`KEPT_PER_DELETED`): a ``policy set`` that keeps a few rules of 10,000 is one
    flush and the adds (kernel 0.90x of the deletions and adds: figures in
    bench/results/2026-12-01-pset.md)."""

    delete: dict = field(default_factory=lambda: defaultdict(dict))
    add: dict = field(default_factory=lambda: defaultdict(dict))
    flush: set = field(default_factory=set)
    kept: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.delete.values()) and not any(self.add.values())

    def size(self) -> int:
        return sum(map(len, self.delete.values())) + sum(map(len, self.add.values()))


class PolicyElements:
    """The policy sets of one network, with the entries behind each element.

    ``groups``: ``{set: {group: entries}}``, ``entries`` the entry itself while a group
    has one (most do), a set from two: no ``(set, group)`` key, no 1-tuple per entry
    (10,000 rules: 1.9 -> 1.0 MiB). In a set without intervals the group *is* the element;
    an interval set's groups are cut into ``pieces``: ``{(set, group): {element:
    frozenset(attribution keys)}}``. A dict keeps its table when keys leave: the sets'
    dicts are copied once they hold under a quarter of their peak (2.5 MiB otherwise
    after a 50,000-rule policy)."""

    def __init__(self) -> None:
        self.groups: dict = {}
        self.pieces: dict = {}
        self._peak = 0

    @classmethod
    def of(cls, entries: Iterable) -> "PolicyElements":
        state = cls()
        state.change(entries, ())
        return state

    def change(self, added: Iterable, removed: Iterable) -> ElementDelta:
        """Apply entries added and removed; returns the elements that changed.

        A set without intervals has one element per group with entries: its elements come
        and go with their groups, straight into the delta (no ``(set, group)`` pair kept per
        element; one-port entries by :mod:`.portgroups`). An interval set's groups that
        changed (``cut``: whether each had entries) are cut again."""
        cut, delta = {}, ElementDelta()
        # elements held per set without intervals (its groups; what goes is a subset of them)
        held = {name: len(groups) for name, groups in self.groups.items() if not _INTERVAL[name]}
        (ports, groups), removed = portgroups.split(removed)   # one-port entries in bulk, if plain
        self._remove(removed if portgroups.remove(self.groups, ports, groups, delta.delete)
                     else removed + ports, cut, delta.delete)
        (ports, groups), added = portgroups.split(added)
        self._add(added if portgroups.add(self.groups, ports, groups, delta.delete, delta.add)
                  else added + ports, cut, delta.delete, delta.add)
        count = sum(map(len, self.groups.values()))
        self._peak = max(self._peak, count)
        if count * 4 < self._peak:   # copied: the dicts' tables shrink (empty ones dropped)
            self.groups, self._peak = {n: dict(groups) for n, groups in self.groups.items() if groups}, count
        for name, group in cut:
            self._cut(name, group, delta)
        self._flushes(held, delta)
        return delta

    def _flushes(self, held: dict, delta: ElementDelta) -> None:
        """Name in ``delta.flush`` the sets without intervals that lose every element (``held``:
        their element counts before), and those of :data:`COUNTED_IN` that keep at most one
        element per :data:`KEPT_PER_DELETED` deleted (those in ``delta.kept``)."""
        for name, gone in delta.delete.items():
            before = held.get(name)
            if not gone or before is None:
                continue
            if len(gone) == before:
                delta.flush.add(name)
            elif name in COUNTED_IN and (before - len(gone)) * KEPT_PER_DELETED <= len(gone):
                delta.flush.add(name)
                kept = set(self.groups.get(name, ()))   # (set and dict ops on their stored hashes)
                kept.difference_update(delta.add.get(name, {}))
                delta.kept[name] = dict.fromkeys(kept)

    def _remove(self, removed: Iterable, cut: dict, gone: dict) -> None:
        """``gone``: ``{set: {element: None}}`` of the elements whose groups emptied."""
        sets, interval = self.groups, _INTERVAL
        for entry in removed:
            where = entry_group(entry)
            name, group = where
            groups = sets.get(name)
            entries = groups.get(group) if groups is not None else None
            if entries is None:
                continue
            if interval[name]:
                cut.setdefault(where, True)
            if entries.__class__ is not set:
                if entries != entry:
                    continue
            else:
                entries.discard(entry)
                if entries:
                    continue
            del groups[group]
            if not interval[name]:
                gone[name][group] = None

    def _add(self, added: Iterable, cut: dict, gone: dict, born: dict) -> None:
        """``born``: ``{set: {element: None}}`` of the elements whose groups filled."""
        sets, interval = self.groups, _INTERVAL
        for entry in added:
            where = entry_group(entry)
            name, group = where
            groups = sets.get(name)
            if groups is None:
                groups = sets[name] = {}
            entries = groups.get(group)
            if interval[name]:
                cut.setdefault(where, entries is not None)
            if entries is None:
                groups[group] = entry
                if not interval[name]:
                    emptied = gone.get(name)
                    if emptied and group in emptied:
                        del emptied[group]   # emptied and filled again: the element stays
                    else:
                        born[name][group] = None
            elif entries.__class__ is set:
                entries.add(entry)
            elif entries != entry:
                groups[group] = {entries, entry}

    def _cut(self, name: str, group: tuple, delta: ElementDelta) -> None:
        old = self.pieces.pop((name, group), {})
        entries = self.groups.get(name, {}).get(group, ())
        new = group_elements(name, group, entries if entries.__class__ in (set, tuple) else (entries,))
        if new:
            self.pieces[(name, group)] = new
        for element in old.keys() - new.keys():
            delta.delete[name][element] = None
        for element in new.keys() - old.keys():
            delta.add[name][element] = None

    def attribution(self) -> dict:
        """``{set: {element: frozenset(attribution keys)}}``."""
        out: dict = defaultdict(dict)
        for name, groups in self.groups.items():
            if not SCHEMAS[name][3]:
                for group, entries in groups.items():
                    out[name][group] = frozenset(map(attribution_key, entries)) \
                        if entries.__class__ is set else frozenset((attribution_key(entries),))
        for (name, _group), pieces in self.pieces.items():
            out[name].update(pieces)
        return out

    def flat(self) -> dict:
        """``{set: {element: None}}`` of every policy set."""
        out: dict = {name: {} for name in POLICY_SETS}
        for name, groups in self.groups.items():
            if not SCHEMAS[name][3]:
                out[name].update(dict.fromkeys(groups))
        for (name, _group), pieces in self.pieces.items():
            out[name].update(dict.fromkeys(pieces))
        return out


def setting_elements(policy, mode: str, elements: Optional[PolicyElements] = None) -> dict:
    """``{set: {element: None}}`` of the network-wide settings. ``elements``: the
    :class:`PolicyElements` of ``policy`` when the caller holds them (``intra`` is then
    read from their ``pol_any`` groups: no pass over the entries)."""
    on = {ON: None}
    settings = policy.settings
    return {
        "restricted": {(i,): None for i in policy.ingress_restricted},
        "egress_allow": on if settings.egress == "allow" and not settings.internal else {},
        "internal": on if settings.internal else {},
        "audit": on if mode == "audit" else {},
        "baudit": on if mode == "audit" else {},
        "intra": dict.fromkeys((i,) for i in intra_identities(policy, elements)),
    }


def intra_identities(policy, elements: Optional[PolicyElements] = None) -> list:
    """The identities ``i`` (sorted) that ``policy`` gives an entry ``(i, i, any)``: the
    segments whose members may send each other anything (the bridge's ``intra`` set).

    From the ``pol_any`` groups of ``elements`` (the ``(src, dst)`` pairs with an ``any``
    entry), else one pass over ``policy.entries``; not :meth:`PolicyMap.between`, whose
    index a fresh map builds over every entry (50,000 rules: most of a one-rule add)."""
    if elements is not None:
        pairs = elements.groups.get("pol_any", ())
    else:
        pairs = [(e[0], e[1]) for e in policy.entries if e.__class__ is PolicyEntry and e[2] == ANY]
    return sorted({src for src, dst in pairs if src == dst})


# --- ports ----------------------------------------------------------------------------------
def port_elements(port) -> dict:
    """``{set: {element: value}}`` that one endpoint puts into the network's sets.

    The addresses a port may send from are known for every port (anti-spoofing
    holds in audit mode too); only enforced ports are in ``ports`` and publish.
    """
    out: dict = defaultdict(dict)
    name, mac = port.name, port.mac.lower()
    out["veths"][(name,)] = None
    quarantined = port.identity == QUARANTINED or port.quarantine is not None
    if quarantined:
        out["quarantined"][(name,)] = None
    ll = link_local(mac)   # its own link-local address is one of its addresses (U10-F4)
    for fam, addr in ((4, port.ipv4), (6, port.ipv6), (6, ll)):
        if addr:
            text = str(ipaddress.ip_address(addr))
            out[f"id{fam}"][(text,)] = (QUARANTINED if quarantined else port.identity,)
            out[f"self{fam}"][(text, text)] = None
    out["macs"][(name, mac)] = None
    out["ll6"][(name, ll)] = None
    out["na6"][(name, int(ipaddress.IPv6Address(ll)))] = None
    if port.ipv4:
        out["ids4"][(name, mac, port.ipv4)] = None
        out["arp4"][(name, port.ipv4)] = None
    if port.ipv6:
        out["ids6"][(name, mac, str(ipaddress.IPv6Address(port.ipv6)))] = None
        out["na6"][(name, int(ipaddress.IPv6Address(port.ipv6)))] = None
    if port.active and not quarantined:
        out["ports"][(name,)] = None
        out["pid"][(name,)], out["pidk"][(name, port.identity)] = (port.identity,), None
        _published(port, out)
    return out


def _published(port, out: dict) -> None:
    """A port's published mappings: (host address range, proto, host port) -> (addr, port)."""
    for proto, host_ip, host_port, cport in port.published:
        number = FLOW[proto].number4
        for fam, addr, anyaddr in ((4, port.ipv4, "0.0.0.0/0"), (6, port.ipv6, "::/0")):
            if not addr or fam not in host_families(host_ip):   # 0.0.0.0: IPv4 only (U18-F5)
                continue
            key = (_cidr_range(anyaddr if is_wildcard(host_ip) else host_ip), (number, number),
                   (host_port, host_port))
            out[f"pub{fam}"][key] = (addr, cport)


def ports_elements(ports: Iterable) -> dict:
    """Union of :func:`port_elements` of ``ports``."""
    out: dict = defaultdict(dict)
    for port in ports:
        for name, elements in port_elements(port).items():
            out[name].update(elements)
    return out


def diff(old: Mapping, new: Mapping, delta: Optional[ElementDelta] = None) -> ElementDelta:
    """The delta from ``old`` to ``new`` (``{set: {element: value}}``); a map
    element whose value changes is deleted and added again."""
    delta = delta or ElementDelta()
    for name in set(old) | set(new):
        before, after = old.get(name, {}), new.get(name, {})
        for element, value in before.items():
            if element not in after or after[element] != value:
                delta.delete[name][element] = value
        for element, value in after.items():
            if element not in before or before[element] != value:
                delta.add[name][element] = value
    return delta


def apply_delta(elements: Mapping, delta: ElementDelta) -> dict:
    """``elements`` (``{set: {element: value}}``) with ``delta`` applied (for tests and drift)."""
    out = {name: dict(els) for name, els in elements.items()}
    for name, els in delta.delete.items():
        for element in els:
            out.get(name, {}).pop(element, None)
    for name, els in delta.add.items():
        out.setdefault(name, {}).update(els)
    return {name: els for name, els in out.items() if els}

