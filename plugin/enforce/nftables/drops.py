"""How secnet's nft rules drop: one place per reason, so every drop is counted and logged alike.

A rule that drops ends in ``deny(reason)``, which is ``goto drop_<reason>``.
Each table has one such chain per reason; it

* in audit mode (the setting set ``audit`` holds its element), for the
  reasons policy decides (:data:`AUDITABLE`), hands over to
  ``audit_<reason>``, which logs the same way with the mark ``audit``,
  counts, and lets the packet pass: policy drops nothing in audit mode,
  while spoofed frames, invalid packets, non-members and whatever leaves or
  enters an ``--internal`` network are still dropped (and logged as drops);
* counts the ``(source identity, destination identity)`` pair of policy
  drops in the dynamic set ``drops`` (``audits`` for would-be drops): the
  identities are the packet's ``meta mark`` and ``ct mark`` (see ``ruleset``);
* reports the packet through NFLOG group :data:`NFLOG_GROUP` with the prefix
  ``sn <network-id[:12]> <reason>[ audit]`` (the daemon reads it), at most
  once per flow and second: the flow is the key of a dynamic set whose
  elements carry their own ``limit rate 1/second`` (a stateful expression
  per element, so the kernel rate-limits each flow apart). The sets are
  bounded (``size``) and forget a flow ``timeout`` after its last packet;
  when a set is full, new flows are counted but not logged until room frees
  up. A named limit ``logcap`` caps what one table logs in all;
* counts and drops the packet in a rule commented ``deny:<reason>``
  (``audit:<reason>`` for would-be drops).

The flow key is source, destination, protocol and destination port for TCP
and UDP, source, destination and protocol for other IP packets, and source
MAC, destination MAC and ethertype for other frames (bridge family only).
"""
from __future__ import annotations

import socket

from plugin.enforce.backend import REASONS, DropEvent

NFLOG_GROUP = 7350
LOG_PREFIX = "sn"
AUDIT_MARK = "audit"
LOG_SET_SIZE = 4096
LOG_SET_TIMEOUT = "2s"
PAIR_SET_SIZE = 65536
LOG_CAP = "rate 500/second burst 1000 packets"
LOG_SETS = ("log4p", "log4", "log6p", "log6", "logl2")
PAIR_SETS = ("drops", "audits")
DYNAMIC_SETS = LOG_SETS + PAIR_SETS
#: reasons that policy decides: audit mode lets these pass (and logs them). Not
#: ``internal``: ``--internal`` is Docker's network setting, not policy, and holds
#: in both modes, as anti-spoofing does (U11-F1)
AUDITABLE = ("no-rule", "egress", "quarantined", "pending")
#: the reasons of a container whose segment is not in force (quarantined, pending)
INACTIVE = ("quarantined", "pending")
#: reasons whose drops are counted per identity pair
PAIRED = ("no-rule", "egress", "internal")
#: the constant lookup key of the setting sets: 0 for every packet
SETTING_KEY = "numgen inc mod 1"

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


def audit_chain_name(reason: str) -> str:
    return "audit_" + reason.replace("-", "_")


def deny(reason: str) -> str:
    """The statement that ends a rule dropping a packet for ``reason``."""
    if reason not in REASONS:
        raise ValueError(f"unknown drop reason {reason!r}")
    return f"goto {drop_chain_name(reason)}"


def log_prefix(network_id: str, reason: str, audit: bool = False) -> str:
    """The NFLOG prefix of drops of ``network_id`` for ``reason``."""
    return f"{LOG_PREFIX} {network_id[:12]} {reason}" + (f" {AUDIT_MARK}" if audit else "")


def parse_log_prefix(prefix: str):
    """(network id prefix, reason, audit) of a secnet NFLOG prefix, or None."""
    parts = prefix.split()
    if len(parts) not in (3, 4) or parts[0] != LOG_PREFIX or parts[2] not in REASONS:
        return None
    if len(parts) == 4 and parts[3] != AUDIT_MARK:
        return None
    return parts[1], parts[2], len(parts) == 4


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


def _log_lines(family: str, prefix: str) -> list:
    return [f"    {match} update @{name} {{ {key} {_EACH_FLOW} }}"
            f" limit name \"logcap\" log group {NFLOG_GROUP} prefix {quote(prefix)}"
            for match, name, key in _flow_rules(family)]


def _pair_line(family: str, reason: str, pair_set: str) -> list:
    if family != "inet" or reason not in PAIRED:
        return []
    return [f"    update @{pair_set} {{ meta mark . ct mark }}"]


def drop_chains(family: str, network_id: str, audit_set: str, passed: str) -> list:
    """Lines of the log sets, the log cap and the drop (and audit) chains of one table.

    ``family`` is ``inet`` or ``bridge`` (which alone logs non-IP frames);
    ``audit_set``: the table's setting set that holds an element in audit
    mode; ``passed``: the statement that lets a would-be drop through.
    A pending or quarantined container's would-be drops pass both tables:
    the bridge table logs its non-IP frames, the inet table its IP flows,
    which it sees only up to their first reply (established traffic passes
    before its policy): a connection is one reported flow, its replies none.
    """
    sets = [s for _m, s, _k in _flow_rules(family)]
    lines = [f"  set {name} {{ type {_SET_TYPES[name]}; size {LOG_SET_SIZE};"
             f" flags dynamic,timeout; timeout {LOG_SET_TIMEOUT}; }}" for name in sets]
    if family == "inet":
        lines += [f"  set {name} {{ type mark . mark; size {PAIR_SET_SIZE}; flags dynamic; counter; }}"
                  for name in PAIR_SETS]
    lines.append(f"  limit logcap {{ {LOG_CAP} }}")
    for reason in REASONS:
        lines.append(f"  chain {drop_chain_name(reason)} {{")
        if reason in AUDITABLE:
            lines.append(f"    {SETTING_KEY} @{audit_set} goto {audit_chain_name(reason)}")
        lines += _pair_line(family, reason, "drops")
        lines += _log_lines(family, log_prefix(network_id, reason))
        lines += [f"    counter drop comment {quote('deny:' + reason)}", "  }"]
        if reason in AUDITABLE:
            lines += _audit_chain(family, network_id, reason, passed)
    return lines


def _audit_chain(family: str, network_id: str, reason: str, passed: str) -> list:
    """Lines of chain ``audit_<reason>``: log, count, let pass. A pending or quarantined
    container's frames are counted in the bridge table, which sees every one of them; its
    IP flows are logged in the inet table, which sees a flow's first packets only."""
    lines = [f"  chain {audit_chain_name(reason)} {{"] + _pair_line(family, reason, "audits")
    logged = _log_lines(family, log_prefix(network_id, reason, audit=True))
    if family == "bridge" and reason in INACTIVE:
        logged = [line for line in logged if "@logl2 " in line]   # IP flows: the inet table
    lines += logged
    if family == "inet" and reason in INACTIVE:   # counted in the bridge table already
        return lines + [f"    {passed}", "  }"]
    return lines + [f"    counter {passed} comment {quote('audit:' + reason)}", "  }"]


_PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}


def _proto_number(name: str):
    """An IP protocol's number from nflog's name for it (``tcp``, ``proto-136``), as the
    eBPF backend reports it; other names (``arp``, ``ethertype-0x88b5``) as they are."""
    if name in _PROTO_NUMBERS:
        return _PROTO_NUMBERS[name]
    if name.startswith("proto-") and name[6:].isdigit():
        return int(name[6:])
    return name or 0


def deliver(packet, received: float, callback) -> None:
    """``callback(DropEvent)`` of one logged drop (an ``nflog.Packet``; ``received``: when
    it was read, the time of a packet that carries none); other log lines are ignored."""
    parsed = parse_log_prefix(packet.prefix)
    if parsed is None:
        return
    network, reason, audit = parsed
    flow = packet.flow()
    ifname = None
    if "physindev" in packet.devices:
        try:
            ifname = socket.if_indextoname(packet.devices["physindev"])
        except OSError:
            ifname = None
    # a port for TCP and UDP only, as the eBPF backend reports it (U14-F4: SCTP's was shown)
    port = flow.dport if flow.proto in ("tcp", "udp") else None
    callback(DropEvent(network=network, reason=reason, family=flow.family,
                       proto=_proto_number(flow.proto), src=flow.src or "",
                       dst=flow.dst or "", port=port, ifname=ifname, audit=audit,
                       time=packet.timestamp or received))
