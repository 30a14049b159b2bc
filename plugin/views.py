"""Read-only views of the daemon for the CLI: status, and one network in detail."""
from __future__ import annotations

import collections
import logging

from segmentation.backends import nftables as nft
from segmentation.compiler import INTRA
from segmentation.options import NetworkOptions

from .counters import read_counters

log = logging.getLogger(__name__)


def status_view(driver) -> dict:
    nets = []
    for net in driver.state.networks():
        eps = driver.state.endpoints(net.id)
        nets.append({
            "id": net.id, "bridge": net.bridge, "endpoints": len(eps),
            "pending": sum(1 for e in eps if e.segment is None and e.quarantine is None),
            "quarantined": sum(1 for e in eps if e.quarantine is not None),
            "rules": len(net.options.get("rules", [])),
        })
    policy = driver.policy
    out = {"healthy": True, "networks": nets,
           "reconcile_repairs": getattr(policy, "repairs", 0)}
    if hasattr(driver.firewall, "status"):
        out["engine"] = driver.firewall.status()
    return out


def _counters(driver, net) -> dict:
    """comment tag -> [packets, bytes] summed over the network's rules."""
    return read_counters(getattr(driver.policy, "runner", None), net.id)


def _rule_rows(net, compiled, counters) -> list:
    options = NetworkOptions.from_dict(net.options)
    per_origin = collections.defaultdict(lambda: [0, 0])
    for (src, dst), grants in compiled.east_west.items():
        for g in grants:
            c = counters.get(nft.grant_tag(src, dst, g.origin), (0, 0))
            per_origin[g.origin][0] += c[0]
            per_origin[g.origin][1] += c[1]
    for direction, table in (("in", compiled.ingress), ("out", compiled.egress)):
        for seg, grants in table.items():
            for g in grants:
                c = counters.get(nft.cidr_tag(seg, direction, g.origin), (0, 0))
                per_origin[g.origin][0] += c[0]
                per_origin[g.origin][1] += c[1]
    rows = [{"rule": r.text(), "packets": per_origin[r.text()][0], "bytes": per_origin[r.text()][1]}
            for r in options.rules]
    if options.intra == "allow":
        rows.append({"rule": f"{INTRA} (same segment, secnet.intra=allow)",
                     "packets": per_origin[INTRA][0], "bytes": per_origin[INTRA][1]})
    return rows


def network_view(driver, net) -> dict:
    eps = driver.state.endpoints(net.id)
    compiled = driver.policy.compiled(net) if hasattr(driver.policy, "compiled") else None
    segments = collections.defaultdict(list)
    quarantined, pending = [], []
    for ep in eps:
        member = {"container": ep.container or "", "endpoint": ep.id[:12],
                  "ipv4": (ep.ipv4 or "").split("/")[0], "ipv6": (ep.ipv6 or "").split("/")[0]}
        if ep.quarantine is not None:
            quarantined.append(dict(member, reason=ep.quarantine))
        elif ep.segment is None:
            pending.append(member)
        else:
            segments[ep.segment].append(member)
    counters = _counters(driver, net)
    drops = {tag[5:]: {"packets": c[0], "bytes": c[1]} for tag, c in counters.items()
             if tag.startswith("deny:")}
    names = sorted(set(segments) | set(compiled.segments if compiled else ()))
    return {
        "id": net.id, "bridge": net.bridge, "options": net.options,
        "segments": [{"name": s, "members": segments.get(s, [])} for s in names],
        "rules": _rule_rows(net, compiled, counters) if compiled else [],
        "quarantined": quarantined, "pending": pending, "dropped": drops,
    }
