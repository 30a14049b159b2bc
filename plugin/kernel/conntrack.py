"""Connection tracking: the one writer of conntrack entries.

The nft rules judge *new* flows; established ones pass on their conntrack
entry. When a policy edit takes an allowance away, the flows it had allowed
must stop too: this module lists the kernel's conntrack entries, judges each
flow of the network with the same compiled policy the kernel enforces
(``segmentation.compiler.verdict``) and deletes the entries of flows that are
no longer allowed. Allowed flows are left alone.
"""
from __future__ import annotations

import logging
import subprocess

from segmentation.compiler import verdict
from segmentation.errors import PolicyError

from plugin.observe.explain import is_host_address

log = logging.getLogger(__name__)
PROTOS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "icmp"}


def parse_entry(line: str):
    """(proto, src, dst, sport, dport) of one `conntrack -L` line, original direction."""
    words = line.split()
    if not words or words[0] not in PROTOS:
        return None
    fields, sources = {}, []
    for w in words:
        key, _, value = w.partition("=")
        if key == "src":
            sources.append(value)
        if value and key not in fields:
            fields[key] = value
    if "src" not in fields or "dst" not in fields:
        return None
    if len(sources) > 1 and sources[1] != fields["dst"]:
        return None  # DNAT'd (a published port): judged as ingress by the kernel, left alone
    sport = int(fields["sport"]) if "sport" in fields else None
    dport = int(fields["dport"]) if "dport" in fields else None
    return words[0], fields["src"], fields["dst"], sport, dport


def _endpoint(addr: str, members: dict):
    seg = members.get(addr)
    if seg:
        return ("segment", seg)
    return ("host", addr) if is_host_address(addr) else ("addr", addr)


def stale_flows(lines, compiled, members: dict) -> list:
    """Entries of flows touching ``members`` (addr -> segment) that policy now denies."""
    out = []
    for line in lines:
        entry = parse_entry(line)
        if entry is None:
            continue
        proto, src, dst, _sport, dport = entry
        if src not in members and dst not in members:
            continue
        s, d = _endpoint(src, members), _endpoint(dst, members)
        if s[0] in ("addr", "host") and d[0] in ("addr", "host"):
            continue
        try:
            allowed = verdict(compiled, s, d, PROTOS[proto], dport if proto in ("tcp", "udp") else None)
        except PolicyError:
            continue
        if not allowed.allowed:
            out.append(entry)
    return out


def prune(compiled, members: dict) -> int:
    """Delete conntrack entries of the flows that ``compiled`` no longer allows."""
    deleted = 0
    for family in ("ipv4", "ipv6"):
        try:
            res = subprocess.run(["conntrack", "-L", "-f", family], capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("cannot list conntrack entries: %s", exc)
            return deleted
        for proto, src, dst, sport, dport in stale_flows(res.stdout.splitlines(), compiled, members):
            cmd = ["conntrack", "-D", "-f", family, "-p", proto, "-s", src, "-d", dst]
            if sport is not None and dport is not None:
                cmd += ["--sport", str(sport), "--dport", str(dport)]
            if subprocess.run(cmd, capture_output=True, timeout=10, check=False).returncode == 0:
                deleted += 1
    if deleted:
        log.info("deleted %d conntrack entries of flows the new policy denies", deleted)
    return deleted


def _members(ports) -> dict:
    return {a: p.segment for p in ports if p.active for a in p.addresses}


def prune_ports(policy, ports) -> int:
    """Delete the entries of flows that ``policy`` no longer allows between ``ports``
    (plugin.enforce.backend.Port) and the outside."""
    return prune(policy, _members(ports))


def forget(port) -> None:
    """Delete conntrack entries of a leaving endpoint's addresses.

    Its address may be handed to the next container: a stale entry must not
    let that container's packets pass as 'established'.
    """
    for addr in port.addresses:
        for flag in ("-s", "-d"):
            try:
                subprocess.run(["conntrack", "-D", flag, addr], capture_output=True, check=False, timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                return
