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
  the bridge table (no conntrack there) counts its one policy drop, a group
  copy (``no-rule``), per ``meta mark`` (the sender's identity) and receiving
  port in ``gdrops``/``gaudits``, named as a pair by :func:`group_copy_pairs`;
  in audit mode it also counts a pending or quarantined container's would-drops
  per pair (``iaudits4``/``iaudits6``, ``gaudits``: :func:`_inactive_pair_lines`),
  so that every would-drop has a pair, as on eBPF (U14-F1);
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

from plugin.enforce.backend import PAIRED, REASONS, DropEvent
from segmentation.identities import OUTSIDE, QUARANTINED

NFLOG_GROUP = 7350
LOG_PREFIX = "sn"
AUDIT_MARK = "audit"
LOG_SET_SIZE = 4096
LOG_SET_TIMEOUT = "2s"
PAIR_SET_SIZE = 65536
LOG_CAP = "rate 500/second burst 1000 packets"
LOG_SETS = ("log4p", "log4", "log6p", "log6", "logl2")
PAIR_SETS = ("drops", "audits")
#: the bridge table's pair sets: group copies (chain ``group_copy``) dropped per
#: (sender's identity, receiving port); :func:`group_copy_pairs` names the port's identity
PORT_PAIR_SETS = ("gdrops", "gaudits")
#: the bridge table's would-drops of pending and quarantined containers (audit mode), per
#: sending port and destination address (``iaudits4``: ARP's target too); their frames to
#: such a container are counted in ``gaudits`` with the sender ``OUTSIDE``, as eBPF names
#: them; :func:`inactive_pairs` names both as (src, dst) identity pairs (U14-F1)
INACTIVE_PAIR_SETS = ("iaudits4", "iaudits6")
DYNAMIC_SETS = LOG_SETS + PAIR_SETS + PORT_PAIR_SETS + INACTIVE_PAIR_SETS
#: reasons that policy decides: audit mode lets these pass (and logs them). Not
#: ``internal``: ``--internal`` is Docker's network setting, not policy, and holds
#: in both modes, as anti-spoofing does (U11-F1)
AUDITABLE = ("no-rule", "egress", "quarantined", "pending")
#: the reasons of a container whose segment is not in force (quarantined, pending)
INACTIVE = ("quarantined", "pending")
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


def _pair_line(family: str, reason: str, audit: bool) -> list:
    if reason not in PAIRED:
        return []
    if family == "inet":
        return [f"    update @{PAIR_SETS[audit]} {{ meta mark . ct mark }}"]
    if reason == "no-rule":   # the bridge table's: group_copy, whose meta mark is the sender's identity
        return [f"    update @{PORT_PAIR_SETS[audit]} {{ meta mark . oifname }}"]
    return []


def _inactive_pair_lines(family: str, reason: str, audit: bool) -> list:
    """The bridge table's audit mode counts an inactive container's would-drops per pair:
    what it sends (ports_in: meta mark 0) per port and destination address, what it is
    sent (inactive_judged: meta mark ``OUTSIDE``) per mark and receiving port."""
    if family != "bridge" or reason not in INACTIVE or not audit:
        return []
    v4, v6 = INACTIVE_PAIR_SETS
    return [f"    meta mark 0 update @{v4} {{ iifname . ip daddr }}",
            f"    meta mark 0 update @{v4} {{ iifname . arp daddr ip }}",
            f"    meta mark 0 update @{v6} {{ iifname . ip6 daddr }}",
            f"    meta mark != 0 update @{PORT_PAIR_SETS[1]} {{ meta mark . oifname }}"]


def named_pairs(counts: dict, ports: dict, port_sets: dict) -> tuple:
    """(dropped, would-drop) ``{(src, dst): (packets, bytes)}`` of the pair sets' counters
    (``counts``: {set: {key: counter}}, keys decoded), each port and address named by the
    identity of its container now (``ports``, ``port_sets``: :func:`port_identities`)."""
    pid, addrs = port_identities(ports, port_sets)
    dropped, audits = (group_copy_pairs(counts.get(a, {}), counts.get(b, {}), pid)
                       for a, b in zip(PAIR_SETS, PORT_PAIR_SETS))
    for name in INACTIVE_PAIR_SETS:
        audits = inactive_pairs(audits, counts.get(name, {}), pid, addrs, OUTSIDE)
    return dropped, audits


def port_identities(ports: dict, port_sets: dict) -> tuple:
    """({port name: identity}, {address text: identity}) of a network's ports now
    (``ports``: {name: Port}; ``port_sets``: their sets, whose ``id4``/``id6`` name a
    quarantined container's addresses ``QUARANTINED``)."""
    by_port = {p.name: QUARANTINED if p.quarantine is not None else p.identity for p in ports.values()}
    by_addr = {key[0]: value[0] for fam in ("id4", "id6") for key, value in port_sets.get(fam, {}).items()}
    return by_port, by_addr


def inactive_pairs(pairs: dict, dumped: dict, port_identity: dict, addr_identity: dict,
                   outside: int) -> dict:
    """``pairs`` ({(src, dst): (packets, bytes)}) plus an inactive-pair set's counters
    (``dumped``: {(port name, address text): (packets, bytes)}), the port named by its
    identity (``port_identity``; a port that is gone is left out) and the address by the
    container's that holds it (``addr_identity``), else ``outside``. A new dict."""
    return _summed(pairs, (((port_identity[port], addr_identity.get(addr, outside))
                            if port_identity.get(port) is not None else None, count)
                           for (port, addr), count in dumped.items()))


def group_copy_pairs(pairs: dict, dumped: dict, identity_of: dict) -> dict:
    """``pairs`` ({(src, dst): (packets, bytes)}, the inet table's) plus the group copies
    of ``dumped`` ({(src identity, port name): counter}, a bridge pair set), each port
    named by its identity now (``identity_of``: {port name: identity}; a port that is
    gone is left out, its drops stay in the per-reason totals). A new dict."""
    return _summed(pairs, (((src, identity_of[port]) if identity_of.get(port) is not None else None, count)
                           for (src, port), count in dumped.items()))


def _summed(pairs: dict, counted) -> dict:
    """``pairs`` plus each ``(key, (packets, bytes))`` of ``counted`` whose key is not
    None and whose count is not empty, added at its key. A new dict."""
    out = dict(pairs)
    for key, count in counted:
        if key is not None and count:
            old = out.get(key, (0, 0))
            out[key] = (old[0] + count[0], old[1] + count[1])
    return out


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
    pair_sets, pair_type = (PAIR_SETS, "mark . mark") if family == "inet" else (PORT_PAIR_SETS, "mark . ifname")
    lines += [f"  set {name} {{ type {pair_type}; size {PAIR_SET_SIZE}; flags dynamic; counter; }}"
              for name in pair_sets]
    if family == "bridge":
        lines += [f"  set {name} {{ type ifname . {typ}; size {PAIR_SET_SIZE}; flags dynamic; counter; }}"
                  for name, typ in zip(INACTIVE_PAIR_SETS, ("ipv4_addr", "ipv6_addr"))]
    lines.append(f"  limit logcap {{ {LOG_CAP} }}")
    for reason in REASONS:
        lines.append(f"  chain {drop_chain_name(reason)} {{")
        if reason in AUDITABLE:
            lines.append(f"    {SETTING_KEY} @{audit_set} goto {audit_chain_name(reason)}")
        lines += _pair_line(family, reason, audit=False)
        lines += _log_lines(family, log_prefix(network_id, reason))
        lines += [f"    counter drop comment {quote('deny:' + reason)}", "  }"]
        if reason in AUDITABLE:
            lines += _audit_chain(family, network_id, reason, passed)
    return lines


def _audit_chain(family: str, network_id: str, reason: str, passed: str) -> list:
    """Lines of chain ``audit_<reason>``: log, count, let pass. A pending or quarantined
    container's frames are counted in the bridge table, which sees every one of them; its
    IP flows are logged in the inet table, which sees a flow's first packets only."""
    lines = [f"  chain {audit_chain_name(reason)} {{"] + _pair_line(family, reason, audit=True)
    lines += _inactive_pair_lines(family, reason, audit=True)
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
    # the port it came in on: a bridged packet's bridge port, else the device a routed one
    # came in on (an uplink); none for the host's own. As the eBPF datapath's ingress
    # ifindex reports it (U28-F4: a drop from the outside named no device here)
    ifindex = packet.devices.get("physindev") or packet.devices.get("indev")
    if ifindex:
        try:
            ifname = socket.if_indextoname(ifindex)
        except OSError:
            ifname = None
    # a port for TCP and UDP only, as the eBPF backend reports it (U14-F4: SCTP's was shown)
    port = flow.dport if flow.proto in ("tcp", "udp") else None
    callback(DropEvent(network=network, reason=reason, family=flow.family,
                       proto=_proto_number(flow.proto), src=flow.src or "",
                       dst=flow.dst or "", port=port, ifname=ifname, audit=audit,
                       time=packet.timestamp or received))
