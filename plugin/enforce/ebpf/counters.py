"""Reading the counters of one eBPF network: ``allowed`` and ``dropped``.

Kernel background. Both maps are per-CPU hashes (bpf/lib/maps.h) that the
programs bump without atomics; a lookup returns one ``(packets, bytes)``
value per possible CPU, summed here. ``allowed`` is keyed by the policy-map
key of the entry that opened a flow (``maps.COUNT_KEY``), ``dropped`` by
(src identity, dst identity, reason, audit) (``maps.DROP_KEY``).
"""
from __future__ import annotations

import struct
from typing import Iterable, Optional

from plugin.enforce.backend import PAIRED, REASONS, Counters

from . import cidrslots, libbpf, maps, pins


def read(handle: pins.Handle, cidrs: tuple, index: Optional[dict] = None) -> Counters:
    """All counters of a network: ``allowed`` per policy target (``cidrs``: the
    policy's CIDR entries, to name CIDR keys and count a piece several of them
    share to each, :func:`spread_cidrs`; ``index``: (src, dst, proto) ->
    PolicyEntry set, to count a piece of overlapping port ranges to each of
    them, maps.piece_owners), ``dropped``/``reasons`` of real drops and
    ``would_drop``/``would_drop_reasons`` of audit mode's.

    Values are ``(packets, bytes)``; bytes count from the network header on."""
    cpus = libbpf.possible_cpus()
    allowed = {}
    fd = handle.maps["allowed"]
    for key in list(libbpf.keys(fd, maps.COUNT_KEY.size)):
        raw = libbpf.lookup(fd, key, maps.COUNT.size * cpus)
        target = maps.count_target(key, cidrs)
        if raw is not None and target is not None:
            allowed[target] = add(allowed.get(target), maps.sum_percpu(raw, cpus))
    raw, allowed = allowed, spread_cidrs(spread(allowed, index) if index else allowed, cidrs)
    once = spread_cidrs(spread(raw, index, first=True) if index else raw, cidrs, first=True)
    dropped, reasons = drops(handle, cpus, audit=False)
    would, would_reasons = drops(handle, cpus, audit=True)
    return Counters(allowed=allowed, allowed_once=once, dropped=dropped, reasons=reasons, would_drop=would,
                    would_drop_reasons=would_reasons)


def policy_count_keys(content: dict) -> set:
    """The ``allowed`` keys (``maps.COUNT_KEY``) under which the programs count the flows
    that the policy map's ``content`` (``maps.policy_content``) allows: one per value (its
    port block; a piece that overlapping ranges share counts under the piece:
    bpf/lib/policy.h ``judge_policy``). Every key's data starts with (src, dst)."""
    keys = set()
    for (_plen, data), value in content.items():
        src, dst = struct.unpack_from(">HH", data)
        lo, hi, code = maps.POLICY_VAL.unpack(value)
        keys.add(maps.COUNT_KEY.pack(maps.CK_POLICY, 0, code, 0, src, dst, lo, hi, 0, bytes(16)))
    return keys


def cidr_count_keys(content: dict) -> set:
    """The ``allowed`` keys under which the programs count the flows that the CIDR map's
    ``content`` (``maps.cidr_content``) allows: one per service slot of each prefix
    (bpf/lib/policy.h ``cidr_lookup``); dns(...) services are named there, never counted."""
    keys = set()
    for (_plen, data), value in content.items():
        direction, identity, family = data[0], int.from_bytes(data[1:3], "big"), data[3]
        if direction == maps.DIRECTIONS[maps.FQDN]:
            continue
        for i in range(maps.U32.unpack_from(value)[0]):
            proto, plen, lo, hi, addr = maps.CIDR_SVC.unpack_from(value, 4 + i * maps.CIDR_SVC.size)
            keys.add(maps.COUNT_KEY.pack(maps.CK_CIDR, direction, proto, family, identity, 0, lo, hi,
                                         plen, addr))
    return keys


def forget_removed(handle: pins.Handle, changes: dict) -> int:
    """Delete the ``allowed`` counters of what an edit took away, so that a rule removed
    and added again counts from zero, as the nftables backend's per-element counters do
    (docs/visibility.md; U28-F1). ``changes``: the edit's map contents before and after
    (``groups.delta_changes``): the policy map's port blocks of the groups it touched
    and, when the CIDR map changed, its service slots. Returns how many keys it asked to
    delete (absent ones are skipped). Raises LibbpfError."""
    before, after = changes["policy"]
    stale = policy_count_keys(before) - policy_count_keys(after)
    if "cidrs" in changes:
        before, after = changes["cidrs"]
        stale |= cidr_count_keys(before) - cidr_count_keys(after)
    if stale:
        libbpf.delete_batch(handle.maps["allowed"], len(stale), b"".join(sorted(stale)))
    return len(stale)


def spread(allowed: dict, index: dict, first: bool = False) -> dict:
    """``allowed`` with each policy-key counter added to every entry that owns it
    (maps.piece_owners; ``first``: to the first of them only, for sums over keys);
    groups without overlapping ranges are left as they are."""
    out: dict = {}
    overlaps: dict = {}
    for target, pb in allowed.items():
        owners = (target,)
        if len(target) == 5 and type(target[0]) is int:   # a PolicyEntry key, not a CIDR/DNS one
            group = target[:3]
            if group not in overlaps:
                overlaps[group] = maps.overlapping((e.lo, e.hi) for e in index.get(group, ()))
            if overlaps[group]:
                owners = maps.piece_owners(target, index)
        for owner in owners[:1] if first else owners:
            out[owner] = add(out.get(owner), pb)
    return out


def spread_cidrs(allowed: dict, cidrs: Iterable, first: bool = False) -> dict:
    """``allowed`` with each CIDR counter added to every CIDR entry that allows its
    packets (cidrslots.Owners: a piece of a prefix that several rules cover;
    ``first``: to the first of them only); other counters are left as they are."""
    owners = None
    out: dict = {}
    for target, pb in allowed.items():
        if len(target) == 7 and target[0] in maps.DIRECTIONS:   # a CidrEntry key
            owners = owners or cidrslots.Owners(cidrs)
            found = owners.of(target)
            for owner in found[:1] if first else found:
                out[owner] = add(out.get(owner), pb)
        else:
            out[target] = add(out.get(target), pb)
    return out


def would_drop(handle: pins.Handle) -> Counters:
    """Audit mode's would-drops in the shapes of :func:`read` (``allowed`` empty)."""
    dropped, reasons = drops(handle, libbpf.possible_cpus(), audit=True)
    return Counters(allowed={}, dropped=dropped, reasons=reasons)


def drops(handle: pins.Handle, cpus: int, audit: bool) -> tuple:
    """``({(src, dst): (packets, bytes)}, {reason name: (packets, bytes)})`` of the
    ``dropped`` map's entries with the given audit flag. The datapath counts every drop
    per pair; the pairs keep the reasons nftables counts per pair (``PAIRED``) and every
    would-drop, so that ``show`` and the metrics give the same pairs on both backends."""
    dropped, reasons = {}, {}
    fd = handle.maps["dropped"]
    for key in list(libbpf.keys(fd, maps.DROP_KEY.size)):
        src, dst, reason, was_audit, _pad = maps.DROP_KEY.unpack(key)
        raw = libbpf.lookup(fd, key, maps.COUNT.size * cpus)
        if raw is None or bool(was_audit) != audit:
            continue
        pb = maps.sum_percpu(raw, cpus)
        name = REASONS[reason] if reason < len(REASONS) else "invalid"
        if audit or name in PAIRED:
            dropped[(src, dst)] = add(dropped.get((src, dst)), pb)
        reasons[name] = add(reasons.get(name), pb)
    return dropped, reasons


def add(a: Optional[tuple], b: tuple) -> tuple:
    """The sum of two ``(packets, bytes)`` (``a`` may be None)."""
    return b if a is None else (a[0] + b[0], a[1] + b[1])
