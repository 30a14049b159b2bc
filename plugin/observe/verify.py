"""`secnet verify`: the policy as real packets see it, against what it should be.

For every ordered pair of segments (one member each; a second member for a
segment's own pair), on each port and protocol a rule names, ICMP echo, and
one TCP and one UDP port that no rule names, in each address family both
members have: the expected verdict (``segmentation.compiler.verdict`` over
the compiled policy the kernel enforces) against what a real probe from the
source's network namespace observes (:mod:`plugin.observe.probes`). A cell that
differs is probed once more (a first packet may meet a cold neighbour
cache); what still differs is a mismatch. Nothing here changes kernel state.

In audit mode policy drops nothing: a cell the policy denies is expected to
pass, marked ``would_drop`` (what enforce mode would drop).
"""
from __future__ import annotations

import ipaddress
import os
import resource
import time

from segmentation.compiler import verdict

from plugin.observe import probes

BATCH = 400          # probes in flight at once (each tcp probe holds a socket)


def _service_label(proto: str, port) -> str:
    return proto if port is None else f"{proto}/{port}"


def services(compiled) -> list:
    """[(proto, port, named)]: what the rules name, icmp, and an unnamed tcp and udp port."""
    named, ranges = set(), {"tcp": [], "udp": []}
    for entry in compiled.entries:
        svc = entry.service
        if svc.proto == "icmp":
            named.add(("icmp", None))
        elif svc.proto in ranges and not svc.all_ports:
            named.update({(svc.proto, svc.lo), (svc.proto, svc.hi)})
            ranges[svc.proto].append((svc.lo, svc.hi))
    out = [(proto, port, True) for proto, port in sorted(named, key=lambda x: (x[0], x[1] or 0))]
    if ("icmp", None) not in named:
        out.append(("icmp", None, False))
    for proto in ("tcp", "udp"):
        port = next(p for p in range(9, 65536) if not any(lo <= p <= hi for lo, hi in ranges[proto]))
        out.append((proto, port, False))
    return out


def _addr(cidr):
    return str(ipaddress.ip_interface(cidr).ip) if cidr else None


def members(compiled, endpoints) -> dict:
    """segment -> its probe-able members (joined, with a namespace), by container name."""
    out: dict = {}
    for ep in sorted(endpoints, key=lambda e: (e.container or "", e.id)):
        if ep.quarantine is None and ep.segment in compiled.segments and ep.sandbox_key \
                and os.path.exists(ep.sandbox_key):
            out.setdefault(ep.segment, []).append(ep)
    return out


def plan(compiled, endpoints, mode: str = "enforce") -> tuple:
    """(cells, skipped pairs) of one verification of a network in ``mode``."""
    by_seg = members(compiled, endpoints)
    svcs = services(compiled)
    cells, skipped = [], []
    for src in compiled.segments:
        for dst in compiled.segments:
            pool_s, pool_d = by_seg.get(src, []), by_seg.get(dst, [])
            a = pool_s[0] if pool_s else None
            b = (pool_d[1] if len(pool_d) > 1 else None) if src == dst else (pool_d[0] if pool_d else None)
            if a is None or b is None:
                why = "one member only" if src == dst and pool_s else "no member to probe"
                skipped.append({"src": src, "dst": dst, "why": why})
                continue
            cells += _pair_cells(compiled, svcs, src, dst, a, b, mode == "audit")
    return cells, skipped


def _pair_cells(compiled, svcs: list, src: str, dst: str, a, b, audit: bool) -> list:
    out = []
    for family, attr in ((4, "ipv4"), (6, "ipv6")):
        sa, da = _addr(getattr(a, attr)), _addr(getattr(b, attr))
        if not (sa and da):
            continue
        for proto, port, named in svcs:
            v = verdict(compiled, ("segment", src), ("segment", dst), proto, port)
            would_drop = audit and not v.allowed
            reason = f"audit mode passes it; enforce mode would drop it: {v.reason}" if would_drop \
                else v.reason
            out.append({"src": src, "dst": dst, "service": _service_label(proto, port),
                        "named": named, "proto": proto, "port": port, "family": family,
                        "expected": v.allowed or would_drop, "would_drop": would_drop, "reason": reason,
                        "src_container": a.container, "dst_container": b.container,
                        "src_address": sa, "dst_address": da,
                        "src_netns": a.sandbox_key, "dst_netns": b.sandbox_key})
    return out


def _probe(cells: list, timeout: float) -> None:
    """Fill in ``observed``/``outcome`` of each cell, BATCH probes at a time."""
    for start in range(0, len(cells), BATCH):
        chunk = cells[start:start + BATCH]
        specs = [probes.Spec(i, c["proto"], c["family"], c["src_netns"], c["src_address"],
                             c["dst_netns"], c["dst_address"], c["port"]) for i, c in enumerate(chunk)]
        outcome = probes.Session(specs, timeout).run()
        for i, c in enumerate(chunk):
            c["outcome"] = outcome[i]
            c["observed"] = probes.reached(outcome[i])


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * BATCH + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def verify(network_id: str, compiled, endpoints, timeout: float = 0.5, mode: str = "enforce") -> dict:
    """Probe, compare, and describe the result (``ok`` is True when every cell matches).

    ``mode`` is the network's (``enforce`` or ``audit``): what its cells are expected to do.
    """
    started = time.monotonic()
    _raise_fd_limit()
    cells, skipped = plan(compiled, endpoints, mode)
    by_seg = members(compiled, endpoints)
    _probe(cells, timeout)
    again = [c for c in cells if c["observed"] != c["expected"]]
    if again:
        time.sleep(0.2)
        _probe(again, timeout)
        for c in again:
            c["retried"] = True
    for c in cells:
        for key in ("src_netns", "dst_netns"):
            c.pop(key)
    mismatches = sum(c["observed"] != c["expected"] for c in cells)
    svcs = services(compiled)
    return {"network": network_id, "mode": mode, "ok": mismatches == 0, "mismatches": mismatches,
            "probes": len(cells), "segments": list(compiled.segments),
            "services": [_service_label(p, q) for p, q, _n in svcs],
            "unnamed": [_service_label(p, q) for p, q, n in svcs if not n],
            "cells": cells, "skipped": skipped, "seconds": round(time.monotonic() - started, 3),
            "idle": [s for s in compiled.segments if not by_seg.get(s)],
            "single": [s for s in compiled.segments if len(by_seg.get(s, ())) == 1]}
