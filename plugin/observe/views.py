"""Read-only views of the daemon for the CLI: status, and one network in detail."""
from __future__ import annotations

import collections
import logging

from segmentation.policymap import INTRA

from plugin.enforce.backend import REASONS
from plugin.kernel.addresses import host_families
from plugin.observe import counting
from plugin.dns.views import dns_rows

log = logging.getLogger(__name__)


def status_view(state, reconciler, engine=None) -> dict:
    """The daemon and its networks: ``{"healthy", "networks": [...], "reconcile_repairs"}``."""
    nets = []
    for net in state.networks():
        eps = state.endpoints(net.id)
        nets.append({
            "id": net.id, "bridge": net.bridge, "endpoints": len(eps),
            "backend": net.options.backend, "mode": net.options.mode,
            "pending": sum(1 for e in eps if e.segment is None and e.quarantine is None),
            "quarantined": sum(1 for e in eps if e.quarantine is not None),
            "rules": len(net.options.rules),
        })
    out = {"healthy": True, "networks": nets, "reconcile_repairs": reconciler.repairs}
    if engine is not None:
        out["engine"] = engine
    dns = getattr(reconciler, "dns", None)
    if dns is not None:
        out["dns"] = dns.status()
    return out


def _counters(reconciler, net):
    try:
        return reconciler.counters(net)
    except Exception as exc:  # tables missing: report zeros, the reconciler repairs
        log.warning("cannot read counters of %s: %s", net.id[:12], exc)
        from plugin.enforce.backend import Counters
        return Counters()


def _rule_rows(net, policy, counters) -> list:
    per_rule = counting.per_rule(policy, counters)
    rows = [{"rule": r.text(), "packets": per_rule[r.text()][0], "bytes": per_rule[r.text()][1]}
            for r in net.options.rules]
    if net.options.intra == "allow":
        rows.append({"rule": f"{INTRA} (same segment, secnet.intra=allow)",
                     "packets": per_rule[INTRA][0], "bytes": per_rule[INTRA][1]})
    return rows


def network_view(state, reconciler, net) -> dict:
    """One network: segments with members, rules with counters, quarantined, pending, drops."""
    # members by container name (then endpoint id): alike on two hosts with the same
    # containers, whatever their random ids (U28-F5)
    eps = sorted(state.endpoints(net.id), key=lambda e: (e.container or "", e.id))
    policy = reconciler.compiled(net)
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
            segments[ep.segment].append(dict(member, ports=published_rows(ep)))
    counters = _counters(reconciler, net)
    drops, would = _by_reason(counters.reasons), _by_reason(counters.would_drop_reasons)
    names = sorted(set(segments) | set(policy.segments))
    return {
        "id": net.id, "bridge": net.bridge, "options": net.options.to_dict(),
        "backend": net.options.backend, "mode": net.options.mode,
        "segments": [{"name": s, "members": segments.get(s, []), "identity": policy.identities.get(s)}
                     for s in names],
        "rules": _rule_rows(net, policy, counters),
        "quarantined": quarantined, "pending": pending, "dropped": drops, "would_drop": would,
        "dns": _dns(reconciler, net),
    }


def published_rows(ep) -> list:
    """A member's published ports where they are in force (U18-F1: Docker shows
    nothing for a remote driver, and ``-p 8080`` gets a host port secnet chose):
    ``[{"proto", "host_ip", "host_port", "container_port"}]``, one row per host
    address family, as ``docker port`` lists them. A binding without HostIP is
    listed as ``0.0.0.0`` and ``::``, each only when the member has an address of
    that family (a family it has none in is not published: docs/deviations.md);
    sorted by container port, protocol, family."""
    have = {6 if ":" in a else 4 for a in (ep.ipv4, ep.ipv6) if a}
    rows = []
    for proto, host_ip, host_port, cport in ep.ports or ():
        for fam in host_families(host_ip):
            if fam in have:
                shown = host_ip or ("0.0.0.0" if fam == 4 else "::")
                rows.append((int(cport), str(proto), fam, shown, int(host_port)))
    return [{"proto": proto, "host_ip": ip, "host_port": hp, "container_port": cport}
            for cport, proto, _fam, ip, hp in sorted(rows)]


def _by_reason(counts: dict) -> dict:
    """``{reason: {"packets", "bytes"}}`` for every reason of ``REASONS``, zeros
    included: the same keys whichever backend counted (one lists only what it saw)."""
    return {reason: {"packets": c[0], "bytes": c[1]}
            for reason, c in ((r, counts.get(r, (0, 0))) for r in REASONS)}


def _dns(reconciler, net) -> list:
    """Each DNS rule with the addresses learned for it (``DnsService``, when running)."""
    dns = getattr(reconciler, "dns", None)
    return dns_rows(net.options, dns.learned(net.id) if dns is not None else {})
