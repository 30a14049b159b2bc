"""Reading a network's tables back from the kernel, in the terms of ``elements``.

Read when someone asks (drift, ``secnet show``, a metrics scrape), never
polled. Elements come from ``nft -j list set`` and are turned into the
canonical tuples of ``elements.SCHEMAS``, so that the kernel's state and
the desired state compare as plain Python sets. Rules are compared as
normalized JSON (no handles, no counter values), chain by chain.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Iterable

from .drops import DYNAMIC_SETS
from .elements import HIT_SETS, SCHEMAS
from .ruleset import element_text

_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}


# --- elements -------------------------------------------------------------------------------
def _int(value) -> int:
    if isinstance(value, str):
        return int(value, 16) if value.lower().startswith("0x") else int(value)
    return int(value)


def _scalar(kind: str, value):
    if kind in ("mark", "raw", "port", "zero"):
        return _int(value)
    if kind == "proto":
        return _PROTOCOLS[value] if isinstance(value, str) and value in _PROTOCOLS else _int(value)
    if kind in ("ip4", "ip6"):
        return str(ipaddress.ip_address(value))
    if kind == "mac":
        return value.lower()
    return value


def _ranged(kind: str, value) -> tuple:
    """(lo, hi) of one field of an interval element (addresses as ints)."""
    if isinstance(value, dict) and "prefix" in value:
        net = ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}")
        return int(net.network_address), int(net.broadcast_address)
    if isinstance(value, dict) and "range" in value:
        lo, hi = value["range"]
        return _ranged(kind, lo)[0], _ranged(kind, hi)[0]
    if kind in ("ip4", "ip6"):
        n = int(ipaddress.ip_address(value))
        return n, n
    n = _scalar(kind, value)
    return n, n


def _fields(kinds: tuple, value, interval: bool) -> tuple:
    parts = value["concat"] if isinstance(value, dict) and "concat" in value else [value]
    conv = _ranged if interval else _scalar
    return tuple(conv(k, v) for k, v in zip(kinds, parts))


def parse_element(name: str, raw) -> tuple:
    """(element, value or None, (packets, bytes) or None) of one JSON element of set ``name``."""
    _family, key, vkinds, interval = SCHEMAS[name]
    counter = None
    if isinstance(raw, dict) and "elem" in raw:
        counter = raw["elem"].get("counter")
        raw = raw["elem"]["val"]
    value = None
    if vkinds:
        raw, data = raw
        value = _fields(vkinds, data, False)
    element = _fields(key, raw, interval)
    return element, value, (counter["packets"], counter["bytes"]) if counter else None


def read_elements(runner, table: str, names: Iterable[str]) -> dict:
    """``{set: {element: (value, counter)}}`` of the named sets (missing sets: absent).

    Raises NftError when a table is missing.
    """
    out: dict = {}
    by_family: dict = {}
    for name in names:
        by_family.setdefault(SCHEMAS[name][0], set()).add(name)
    for family, wanted in by_family.items():
        data = runner.list_json("table", family, table)
        for obj in data.get("nftables", []):
            s = obj.get("set") or obj.get("map")
            if not s or s["name"] not in wanted:
                continue
            els = out.setdefault(s["name"], {})
            for raw in s.get("elem", []):
                element, value, counter = parse_element(s["name"], raw)
                els[element] = (value, counter)
    return out


# --- rules ----------------------------------------------------------------------------------
def _strip(obj):
    """A JSON rule expression without counter values (the rule's identity)."""
    if isinstance(obj, dict):
        return {k: ({} if k == "counter" else _strip(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def rules_by_chain(data: dict, family: str) -> dict:
    """``{(family, chain): [normalized rule text, ...]}`` of a JSON listing,
    plus ``{(family, "set " + name): declaration}`` of its sets (no elements)."""
    out: dict = {}
    for obj in data.get("nftables", []):
        if "chain" in obj:
            c = obj["chain"]
            hook = {k: c[k] for k in ("type", "hook", "prio", "policy") if k in c}
            out.setdefault((family, c["name"]), [json.dumps(hook, sort_keys=True)])
        elif "rule" in obj:
            r = obj["rule"]
            text = json.dumps({"expr": _strip(r["expr"]), "comment": r.get("comment")}, sort_keys=True)
            out.setdefault((family, r["chain"]), []).append(text)
        else:
            s = obj.get("set") or obj.get("map")
            if s:
                decl = {k: v for k, v in s.items() if k not in ("elem", "handle", "table", "family")}
                out[(family, "set " + s["name"])] = [json.dumps(decl, sort_keys=True)]
    return out


def read_rules(runner, table: str) -> dict:
    """:func:`rules_by_chain` of both tables; raises NftError when one is missing."""
    out: dict = {}
    for family in ("inet", "bridge"):
        out.update(rules_by_chain(runner.list_json("table", family, table, terse=True,
                                                   stateless=True), family))
    return out


def element_problems(want: dict, have: dict) -> list:
    """Lines naming the elements ``have`` (read_elements) lacks or has beyond ``want``."""
    problems = []
    for name in sorted(want):
        w = want[name]
        h = {e: v for e, (v, _c) in have.get(name, {}).items()}
        if name not in have and w:
            problems.append(f"set {name} missing")
            continue
        missing = [e for e in w if e not in h or h[e] != w[e]]
        extra = [e for e in h if e not in w]
        problems += [f"set {name}: missing element {element_text(name, e, w[e])}"
                     for e in missing[:3]]
        problems += [f"set {name}: unexpected element {element_text(name, e, h[e])}"
                     for e in extra[:3]]
    return problems


def digested(shapes: dict) -> dict:
    """``shapes`` (``{key: [item, ...]}``, as :func:`compare_rules` takes) with each
    item replaced by a 16-byte digest of its ``repr``: what :func:`compare_rules`
    needs of a network's reference, kept in ~0.05 KiB an item instead of its tuples
    of attributes (one network's reference: ~0.8 MiB -> ~30 KiB)."""
    return {key: [hashlib.blake2b(repr(item).encode(), digest_size=16).digest() for item in items]
            for key, items in shapes.items()}


def compare_rules(want: dict, have: dict, limit: int = 5) -> list:
    """One line per chain whose rules differ (first differing rule named)."""
    problems = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        if w == h:
            continue
        family, what = key
        if h is None:
            problems.append(f"{family} {what} missing")
        elif w is None:
            problems.append(f"{family} {what} unexpected")
        else:
            i = next((i for i, (a, b) in enumerate(zip(w, h)) if a != b), min(len(w), len(h)))
            problems.append(f"{family} {what}: item {i} differs ({len(h)} items, want {len(w)})")
    return problems[:limit]


# --- counters -------------------------------------------------------------------------------
def rule_counters(runner, table: str) -> dict:
    """comment -> [packets, bytes] over both tables' rules (missing tables: nothing)."""
    out: dict = {}
    for family in ("inet", "bridge"):
        try:
            data = runner.list_json("table", family, table, terse=True)
        except Exception:   # a missing table counts nothing; drift() reports it
            continue
        for obj in data.get("nftables", []):
            rule = obj.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    c = out.setdefault(rule["comment"], [0, 0])
                    c[0] += expr["counter"]["packets"]
                    c[1] += expr["counter"]["bytes"]
    return out


def desired_sets() -> tuple:
    """The sets drift compares (all but the dynamic sets: the drop log's, the pair
    counters', the policy's hit sets)."""
    return tuple(n for n in SCHEMAS if n not in DYNAMIC_SETS and n not in HIT_SETS)
