"""How secnet's nft rules drop: one place, so every drop is counted and logged alike.

A rule that drops ends in ``deny(reason)``, which is ``goto drop_<reason>``.
Each table has one such chain per reason; it

* reports the packet through NFLOG group :data:`NFLOG_GROUP` with the prefix
  ``sn <network-id[:12]> <reason>`` (the daemon reads it: ``secnet log``),
  at most once per flow and second: the flow is the key of a dynamic set
  whose elements carry their own ``limit rate 1/second`` (a stateful
  expression per element, so the kernel rate-limits each flow apart). The
  sets are bounded (``size``) and forget a flow ``timeout`` after its last
  packet; when a set is full, new flows are counted but not logged until
  room frees up. A named limit ``logcap`` caps what one table logs in all,
  so that a flood of distinct flows cannot flood the daemon;
* counts and drops the packet in a rule commented ``deny:<reason>``: the
  counters behind those comments feed `secnet show` and the metrics.

The flow key is source, destination, protocol and destination port for TCP
and UDP, source, destination and protocol for other IP packets, and source
MAC, destination MAC and ethertype for other frames (bridge family only).
"""
from __future__ import annotations

import hashlib

NFLOG_GROUP = 7350
LOG_PREFIX = "sn"
LOG_SET_SIZE = 4096
LOG_SET_TIMEOUT = "2s"
LOG_CAP = "rate 500/second burst 1000 packets"
LOG_SETS = ("log4p", "log4", "log6p", "log6", "logl2")
REASONS = ("no-rule", "egress", "internal", "not-member", "invalid",
           "quarantined", "pending", "spoofed", "ethertype")

_SET_TYPES = {
    "log4p": "ipv4_addr . ipv4_addr . inet_proto . inet_service",
    "log4": "ipv4_addr . ipv4_addr . inet_proto",
    "log6p": "ipv6_addr . ipv6_addr . inet_proto . inet_service",
    "log6": "ipv6_addr . ipv6_addr . inet_proto",
    "logl2": "ether_addr . ether_addr . ether_type",
}
_PORTED = "meta l4proto { tcp, udp }"
_UNPORTED = "meta l4proto != { tcp, udp }"
_EACH_FLOW = "limit rate 1/second burst 1 packets"


def quote(name: str) -> str:
    return '"' + name + '"'


def drop_chain_name(reason: str) -> str:
    return "drop_" + reason.replace("-", "_")


def deny(reason: str) -> str:
    """The statement that ends a rule dropping a packet for ``reason``."""
    if reason not in REASONS:
        raise ValueError(f"unknown drop reason {reason!r}")
    return f"goto {drop_chain_name(reason)}"


def log_prefix(network_id: str, reason: str) -> str:
    """The NFLOG prefix of drops of ``network_id`` for ``reason``."""
    return f"{LOG_PREFIX} {network_id[:12]} {reason}"


def parse_log_prefix(prefix: str):
    """(network id prefix, reason) of a secnet NFLOG prefix, or None."""
    parts = prefix.split()
    if len(parts) != 3 or parts[0] != LOG_PREFIX or parts[2] not in REASONS:
        return None
    return parts[1], parts[2]


def pair_drop_tag(src: str, dst: str) -> str:
    """Comment of the counter of packets dropped from ``src`` to ``dst`` (segments or OUTSIDE)."""
    return "d" + hashlib.sha1(f"{src}>{dst}".encode()).hexdigest()[:15]


OUTSIDE = "(outside)"


def _flow_rules(family: str) -> list:
    """(match, set, key) of each kind of flow, in the order the drop chains try them."""
    rules = [
        (_PORTED, "log4p", "ip saddr . ip daddr . meta l4proto . th dport"),
        (_UNPORTED, "log4", "ip saddr . ip daddr . meta l4proto"),
        (_PORTED, "log6p", "ip6 saddr . ip6 daddr . meta l4proto . th dport"),
        (_UNPORTED, "log6", "ip6 saddr . ip6 daddr . meta l4proto"),
    ]
    if family == "inet":
        return [(f"meta nfproto {'ipv4' if '4' in s else 'ipv6'} {m}", s, k) for m, s, k in rules]
    rules = [(f"ether type {'ip' if '4' in s else 'ip6'} {m}", s, k) for m, s, k in rules]
    return rules + [("ether type != { ip, ip6 }", "logl2", "ether saddr . ether daddr . ether type")]


def drop_chains(family: str, network_id: str) -> list:
    """Lines of the log sets, the log cap and the drop chains of one table.

    ``family`` is ``inet`` or ``bridge`` (which alone logs non-IP frames);
    ``network_id`` is the network's id (its first 12 characters suffice).
    """
    sets = [s for _m, s, _k in _flow_rules(family)]
    lines = [f"  set {name} {{ type {_SET_TYPES[name]}; size {LOG_SET_SIZE};"
             f" flags dynamic,timeout; timeout {LOG_SET_TIMEOUT}; }}" for name in sets]
    lines.append(f"  limit logcap {{ {LOG_CAP} }}")
    for reason in REASONS:
        prefix = quote(log_prefix(network_id, reason))
        lines.append(f"  chain {drop_chain_name(reason)} {{")
        for match, name, key in _flow_rules(family):
            lines.append(f"    {match} update @{name} {{ {key} {_EACH_FLOW} }}"
                         f" limit name \"logcap\" log group {NFLOG_GROUP} prefix {prefix}")
        lines.append(f"    counter drop comment {quote('deny:' + reason)}")
        lines.append("  }")
    return lines
