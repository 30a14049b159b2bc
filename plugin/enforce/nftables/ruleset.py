"""The nftables datapath: a fixed ruleset per network, driven by set and map elements.

Kernel background. Each secnet network gets two tables named
``secnet_<network-id[:12]>``:

* ``table bridge`` runs on the frames of the network's bridge ports, before
  anything else. It knows every port (``veths``) and the enforced ones
  (``ports``); a port that is pending (segment unknown) or quarantined
  gets nothing in or out. It drops spoofed frames: the source MAC, IPv4/IPv6
  source address and ARP sender of a port must be the ones the network
  gave it (``macs``, ``ids4``/``ids6``, ``ll6``, ``na6``); its IPv6
  link-local source only the EUI-64 address of its MAC (``ll6``). Its base
  chains hook every bridge of the host: a frame of a device outside the
  network's interface group (``meta iifgroup``/``oifgroup``, ``portlinks``)
  leaves them on one compare, and every port of the network is in that group.
* ``table inet``: with ``br_netfilter`` bridged IP traffic also passes the
  inet ``forward`` hook, with the bridge as input and output device, and
  conntrack works there: replies to allowed flows pass (``ct state
  established,related``), and so do further packets of a flow judged
  before that no reply has answered yet (``ct status confirmed``: its
  first packet was let through). A new flow's two ends are turned into
  *identities* (``segmentation.identities``): the source's into the packet
  mark (``meta mark set ip saddr map @id4``), the destination's into the
  connection mark (``ct mark set ip daddr map @id4``); an address that is
  not the network's is ``OUTSIDE``. The verdict is then a lookup of
  ``meta mark . ct mark [. protocol . port]`` in the policy sets
  (``pol_*``), of ``identity . address [...]`` in the CIDR sets
  (``eg*``/``in*``), and of the setting sets (``egress_allow``,
  ``internal``, ``audit``, ``restricted``). Their elements come from
  ``elements``; every set of the policy has per-element counters.

So the rules never change while the network lives: a join, a leave, a
policy edit, a new segment, a quarantine or a mode switch is a set-element
delta (:func:`delta_script`), one transaction. Only :func:`network_script`
writes rules (create, restore, drift repair), replacing both tables in one
transaction. What policy lets through is marked :data:`PASSED_MARK` (chain
``pass``), which Docker's ``DOCKER-USER`` chain requires (``plugin.dockerfw``).
The marks hold identities only from the moment a flow's first packet is
judged until it leaves the chain: nothing else reads them.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping

from plugin.dns.datapath import LEARNED_FLOW_MARK
from plugin.kernel.links import port_group
from segmentation.identities import HOST, OUTSIDE, PENDING, QUARANTINED

from . import fqdn
from . import northsouth as ns
from .drops import DYNAMIC_SETS, SETTING_KEY, deny, drop_chains, quote as _q
from .elements import POLICY_SETS, SCHEMAS, ElementDelta
from .runner import PASSED_MARK, TABLE_PREFIX

FORMAT = 15   # bump when the ruleset changes shape: drift() then reports it
ND = "icmpv6 type { " + ", ".join(ns.ND_TYPES + ns.MLD_TYPES) + " }"
_TYPES = {"mark": "mark", "ip4": "ipv4_addr", "ip6": "ipv6_addr", "proto": "inet_proto",
          "port": "inet_service", "ifname": "ifname", "mac": "ether_addr"}
_BRIDGE_TYPEOF = {"na6": "typeof iifname . @th,64,128"}
#: the ``ct mark`` bit of a flow that this table judged and let through (chain ``pass``).
#: A flow's later packets pass on its conntrack state alone only with it (or once answered,
#: ``established``): a conntrack entry can be confirmed without secnet's verdict -- the
#: bridge confirms a broadcast or multicast frame's entry as it passes a copy up to the host
#: (br_netfilter_hooks.c ``br_nf_local_in``), whatever the host's chains then do with it --
#: and such an entry must not open its flow (U17-F6). Free of ``LEARNED_FLOW_MARK`` and of
#: the 16-bit identities the judgement writes there.
JUDGED_FLOW_MARK = 0x01000000
_JUDGED = f"ct mark & {JUDGED_FLOW_MARK:#010x} == {JUDGED_FLOW_MARK:#010x}"
_PROTO_NAMES = {6: "tcp", 17: "udp"}
#: an --internal network in audit mode (both setting sets hold their element)
_INTERNAL_AUDIT = f"{SETTING_KEY} @internal {SETTING_KEY} @audit"
FQDN_SET_SIZE = 16384   # elements per learned-address set (plugin.dns.store bounds the network)


def table_name(network_id: str) -> str:
    return TABLE_PREFIX + network_id[:12]


# --- sets -----------------------------------------------------------------------------------
def set_declaration(name: str) -> str:
    family, key, value, interval = SCHEMAS[name]
    if name in _BRIDGE_TYPEOF:
        typ = _BRIDGE_TYPEOF[name]
    elif key == ("zero",):
        typ = f"typeof {SETTING_KEY}"
    else:
        typ = "type " + " . ".join(_TYPES[k] for k in key)
        if value:
            typ += " : " + " . ".join(_TYPES[k] for k in value)
    flags = " flags interval;" if interval else ""
    counter = " counter;" if name in POLICY_SETS else ""
    kind = "map" if value else "set"
    return f"  {kind} {name} {{ {typ};{flags}{counter} }}"


def _field(kind: str, value, interval: bool) -> str:
    if interval:
        lo, hi = value
        if kind in ("ip4", "ip6"):
            return _address_range(kind, lo, hi)
        if kind == "proto":
            return _PROTO_NAMES.get(lo, str(lo))
        text = f"{lo:#x}" if kind == "mark" else str(lo)
        return text if lo == hi else f"{text}-{hi:#x}" if kind == "mark" else f"{lo}-{hi}"
    if kind == "mark" or kind == "raw":
        return f"{value:#x}"
    if kind == "proto":
        return _PROTO_NAMES.get(value, str(value))
    if kind == "ifname":
        return _q(value)
    return str(value)


def _address_range(kind: str, lo: int, hi: int) -> str:
    cls = ipaddress.IPv4Address if kind == "ip4" else ipaddress.IPv6Address
    nets = list(ipaddress.summarize_address_range(cls(lo), cls(hi)))
    if len(nets) == 1:
        net = nets[0]
        return str(net.network_address) if net.num_addresses == 1 else str(net)
    return f"{cls(lo)}-{cls(hi)}"


def element_text(name: str, element: tuple, value=None, key_only: bool = False) -> str:
    """nft text of one element of set ``name`` (``key . key [: value]``)."""
    _family, key, vkinds, interval = SCHEMAS[name]
    text = " . ".join(_field(k, v, interval) for k, v in zip(key, element))
    if vkinds and not key_only:
        text += " : " + " . ".join(_field(k, v, False) for k, v in zip(vkinds, value))
    return text


def _element_lines(verb: str, table: str, elements: Mapping, key_only: bool = False,
                   per_line: int = 2000) -> Iterable[str]:
    for name, els in elements.items():
        if not els:
            continue
        family = SCHEMAS[name][0]
        items = list(els.items())
        for i in range(0, len(items), per_line):
            body = ", ".join(element_text(name, e, v, key_only) for e, v in items[i:i + per_line])
            yield f"{verb} element {family} {table} {name} {{ {body} }}"


def delta_script(network_id: str, delta: ElementDelta) -> str:
    """One transaction: the deletions of ``delta``, then its additions."""
    t = table_name(network_id)
    lines = list(_element_lines("delete", t, delta.delete, key_only=True))
    lines += _element_lines("add", t, delta.add)
    return "\n".join(lines) + ("\n" if lines else "")


# --- the inet table -------------------------------------------------------------------------
def _rules(name: str, *rules: str, hook: str = "") -> list:
    head = [f"  chain {name} {{"] + ([f"    {hook}"] if hook else [])
    return head + [f"    {r}" for r in rules] + ["  }"]


def _identity_chains() -> list:
    return (
        _rules("pass", f"meta mark set meta mark | {PASSED_MARK:#010x} ct mark set ct mark | {JUDGED_FLOW_MARK:#010x} accept")
        # what no policy judges (a group copy, judged per port by the bridge table; address
        # resolution on the link): passed, but its conntrack entry is not marked judged
        + _rules("pass_link", f"meta mark set meta mark | {PASSED_MARK:#010x} accept")
        + _rules("src_identity", "meta mark set ip saddr map @id4 return",
                 "meta mark set ip6 saddr map @id6 return", deny("not-member"))
        + _rules("dst_identity", "ct mark set ip daddr map @id4 return",
                 "ct mark set ip6 daddr map @id6 return", deny("not-member"))
        + _rules("reserved", f"meta mark {QUARANTINED} {deny('quarantined')}",
                 f"ct mark {QUARANTINED} {deny('quarantined')}",
                 f"meta mark {PENDING} {deny('pending')}", f"ct mark {PENDING} {deny('pending')}")
    )


def _policy_chains() -> list:
    pair = "meta mark . ct mark"
    ported = "meta l4proto . th dport"
    east_west = _rules(
        "east_west",
        f"{pair} . {ported} @pol_port goto pass",
        f"{pair} . {ported} @pol_range goto pass",
        f"{pair} . meta l4proto @pol_proto goto pass",
        f"icmp type echo-request {pair} @pol_icmp goto pass",
        f"icmpv6 type echo-request {pair} @pol_icmp goto pass",
        # (a hairpin flow -- a member reaching a published port of this network,
        # through any host address -- is here too, DNAT'd in prerouting: judged as
        # east-west to the member behind the port, on its container port)
        f"{pair} @pol_any goto pass",
        deny("no-rule"))
    # after the CIDR lookups: the addresses DNS answers taught (dns(NAME) rules, plugin.dns)
    # (the connection remembers it: its flow goes on after the address expired, plugin.kernel.conntrack)
    # (then counted under the tag of the DNS rules that taught it: chain fqdn_count)
    learned = [r.strip() for r in fqdn.lookup_rules(
        "meta mark", f"ct mark set ct mark | {LEARNED_FLOW_MARK:#010x} goto fqdn_count").splitlines()]
    counted = [line for name, rules in fqdn.count_chains("goto pass").items()
               for line in _rules(name, *rules)]
    egress = _rules("egress", f"{SETTING_KEY} @internal {deny('internal')}", *_cidr_lookups(
        "meta mark", "ip daddr", "ip6 daddr", "eg", first=True), *learned,
        f"{SETTING_KEY} @egress_allow goto pass", deny("egress"))
    ingress = _rules("ingress", f"{SETTING_KEY} @internal {deny('internal')}",
                     "ct mark @restricted goto ingress_rules",
                     "ct status dnat goto pass",            # published ports (Docker's behaviour)
                     "fib saddr type local goto pass",      # the host
                     deny("no-rule"))
    ingress_rules = _rules("ingress_rules", *_cidr_lookups("ct mark", "ip saddr", "ip6 saddr", "in",
                                                            first=False), deny("no-rule"))
    return east_west + egress + counted + ingress + ingress_rules


def _cidr_lookups(ident: str, sel4: str, sel6: str, prefix: str, first: bool) -> list:
    """Lookups of (identity, address) in the CIDR sets, identity first for egress."""
    out = []
    for kind, match in (("", " . meta l4proto . th dport"), ("_icmp", ""), ("_any", "")):
        for fam, sel, echo in ((4, sel4, "icmp"), (6, sel6, "icmpv6")):
            key = f"{ident} . {sel}" if first else f"{sel} . {ident}"
            cond = f"{echo} type echo-request " if kind == "_icmp" else ""
            out.append(f"{cond}{key}{match} @{prefix}{fam}{kind} goto pass")
    return out


def _base_chains(bridge: str, subnets: Iterable[str] = ()) -> list:
    br = _q(bridge)
    # the link's IPv6 destinations: group, link-local, the network's own (the gateway)
    link6 = ", ".join(["ff00::/8", "fe80::/10"] + [n for n in subnets if ":" in n])
    forward = _rules(
        "forward",
        f"iifname != {br} oifname != {br} accept",
        "ct state established,related goto pass",
        # a flow judged and let through, not answered yet (a retransmitted SYN, one-way
        # UDP): judged once, counted once, as on eBPF (its conntrack map)
        f"ct status confirmed {_JUDGED} goto pass",
        # a copy of a broadcast or multicast frame: judged per port, by the bridge table
        # (chain group_copy), so passed here ahead of any judgement (invalid, east_west);
        # after the two rules above, which pass it alike, so that an established unicast
        # packet does not walk it (~0.1 us a rule: bench/results/2026-11-30-perfchk.md)
        f"iifname {br} oifname {br} meta pkttype {{ broadcast, multicast }} goto pass_link",
        f"ct state invalid {deny('invalid')}",
        # address resolution and group membership on the link (sources checked in the bridge
        # table); routed to another network they are judged as any packet (U17-F1, U17-F4)
        f"iifname {br} oifname {br} {ND} goto pass_link",
        f"iifname {br} oifname {br} ip protocol igmp ip daddr 224.0.0.0/4 goto pass_link",
        f"meta mark set {OUTSIDE} ct mark set {OUTSIDE}",
        f"iifname {br} jump src_identity",
        f"oifname {br} jump dst_identity",
        # audit mode passes an inactive container's flows ("reserved"), but not past
        # --internal: Docker's setting, not policy (U11-F1); enforce drops them anyway
        f"iifname != {br} {_INTERNAL_AUDIT} {deny('internal')}",
        f"oifname != {br} {_INTERNAL_AUDIT} {deny('internal')}",
        "jump reserved",
        f"iifname {br} oifname {br} goto east_west",
        f"iifname {br} goto egress",
        "goto ingress",
        hook="type filter hook forward priority filter - 5; policy accept;")
    host_in = _rules(
        "host_in",
        f"iifname != {br} accept",
        # before the conntrack checks: a frame the bridge passes up because it is in
        # promiscuous mode (a capture on it) has no conntrack state (br_nf_local_in); to
        # another host address (routed) it is judged as any packet (U17-F4)
        f"ip6 daddr {{ {link6} }} {ND} accept",
        # a broadcast or multicast: each packet, as egress (its flooded copies, let through
        # before the bridge passes it up, confirmed the shared conntrack entry)
        "meta pkttype { broadcast, multicast } goto host_judge",
        "ct state established,related accept",
        f"ct status confirmed {_JUDGED} accept",
        # martian but for route_localnet: the host's loopback stays the host's (before the
        # state check: whatever its conntrack state, it is reported as eBPF reports it)
        f"ip daddr 127.0.0.0/8 {deny('loopback')}",
        f"ct state invalid {deny('invalid')}",
        "goto host_judge",
        hook="type filter hook input priority filter - 5; policy accept;")
    host_in += _rules("host_judge", f"meta mark set {OUTSIDE} ct mark set {HOST}", "jump src_identity",
                      f"{_INTERNAL_AUDIT} {deny('internal')}", "jump reserved", "goto egress")
    # The host's own flows into the network. A flow the host sends to a
    # published port (127.0.0.1:P) is DNAT'd in this same hook, after the
    # output device (lo) was chosen: it is recognised by its new address.
    host_out = _rules(
        "host_out",
        "ct state established,related accept",
        f"ct status confirmed {_JUDGED} accept",
        f"oifname {br} {ND} accept",
        f"oifname {br} ip protocol igmp accept",
        f"oifname {br} jump dst_identity",
        f"oifname {br} goto from_host",
        "ct status dnat goto host_dnat",
        hook="type filter hook output priority filter - 5; policy accept;")
    host_dnat = _rules("host_dnat", "ct mark set ip daddr map @id4 goto from_host",
                       "ct mark set ip6 daddr map @id6 goto from_host")
    from_host = _rules("from_host", f"meta mark set {HOST}", f"{_INTERNAL_AUDIT} {deny('internal')}",
                       "jump reserved", "goto ingress")
    return forward + host_in + host_out + host_dnat + from_host


def render_inet(network_id: str, net) -> list:
    t = table_name(network_id)
    lines = [f"table inet {t} {{"]
    lines += [set_declaration(n) for n, s in SCHEMAS.items()
              if s[0] == "inet" and not n.startswith("pub") and n not in DYNAMIC_SETS]
    lines += ns.pub_maps()
    lines += fqdn.render_sets(FQDN_SET_SIZE).rstrip("\n").splitlines()
    lines += drop_chains("inet", network_id, "audit", "goto pass")
    lines += _identity_chains() + _policy_chains() + _base_chains(net.bridge, net.subnets)
    lines += ns.nat_chains(net.bridge, net.subnets, net.internal)
    lines.append("}")
    return lines


# --- the bridge table -----------------------------------------------------------------------
def render_bridge(network_id: str, bridge: str, subnets: Iterable[str] = ()) -> list:
    """The bridge table's lines; ``subnets``: the network's CIDRs (their IPv4 broadcast
    addresses are group destinations, :func:`_group_destinations`)."""
    group = f"{port_group(bridge):#x}"
    lines = [f"table bridge {table_name(network_id)} {{"]
    lines += [set_declaration(n) for n, s in SCHEMAS.items() if s[0] == "bridge" and n not in DYNAMIC_SETS]
    # What a container may send from a link-local or unspecified source: address
    # resolution, DAD and multicast listener reports. Never router adverts or
    # redirects: a container must not become other containers' router.
    sendable = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit") + ns.MLD_TYPES
    from_link_local = "ip6 saddr { ::, fe80::/10 } icmpv6 type { " + ", ".join(sendable) + " }"
    # Anti-spoofing first, for every port the network knows (pending and
    # quarantined ones too): audit mode lets policy drops pass, never spoofed frames.
    # Per frame, the common case first: an enforced port (``ports``, never quarantined) is
    # accepted on one lookup after anti-spoofing; an IPv4 frame with its port's own MAC and
    # address (``ids4``, whose MACs are ``macs``') returns from anti-spoofing on one.
    # First, the frames of every other bridge (these chains hook them all): a device outside
    # the network's interface group goes on one compare (``portlinks``: every port in
    # ``veths`` is in the group, wherever it is plugged, so none of them skips its checks).
    lines += _rules(
        "ports_in",
        f"meta iifgroup != {group} accept",
        "iifname != @veths accept",
        "jump spoofing",
        # a frame to a group MAC (the group bit, ``@ll,7,1``) must be for a group address:
        # a copy of it goes up to the host, and the bridge confirms its conntrack entry there
        # whatever the host's chains do (U17-F6); judged per copy in group_copy
        "@ll,7,1 1 jump group_sent",
        "iifname @ports accept",
        # (meta mark 0: counted per destination address in audit mode, drops.INACTIVE_PAIR_SETS)
        f"iifname @quarantined meta mark set 0 {deny('quarantined')}",
        f"meta mark set 0 {deny('pending')}",
        hook="type filter hook prerouting priority -300; policy accept;")
    lines += _rules(
        "spoofing",
        "ether type ip iifname . ether saddr . ip saddr @ids4 return",
        f"iifname . ether saddr != @macs {deny('spoofed')}",
        f"ether type arp iifname . arp saddr ether . arp saddr ip != @ids4 {deny('spoofed')}",
        "ether type arp return",
        f"ether type ip iifname . ether saddr . ip saddr != @ids4 {deny('spoofed')}",
        "ether type ip return",
        f"icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @na6 {deny('spoofed')}",
        f"ip6 saddr fe80::/10 iifname . ip6 saddr != @ll6 {deny('spoofed')}",
        f"{from_link_local} return",
        # past here a link-local source is the port's own (``ll6``, with its MAC: ``macs``),
        # one of its addresses as the global one is (``id6``): policy judges it (U10-F4)
        f"ip6 saddr != fe80::/10 iifname . ether saddr . ip6 saddr != @ids6 {deny('spoofed')}",
        # from its own address (a foreign one was spoofed above), but no router's messages
        f"icmpv6 type {{ nd-router-advert, nd-redirect }} {deny('router')}",
        # the host's IPv6 stack drops ::1 from a device before any inet hook (ip6_rcv_core),
        # unreported: here it is reported as eBPF reports it (127.0.0.0/8: host_in)
        f"ip6 daddr ::1 {deny('loopback')}",
        "ether type ip6 return",
        deny("ethertype"))
    for chain, hook in (("ports_fwd", "forward"), ("ports_out", "output")):
        # (not ``oifname @ports accept`` first: every other network's frames pass these chains
        # too, and would pay two lookups instead of one)
        lines += _rules(chain, f"meta oifgroup != {group} accept",
                        *(_UNICAST_TO_PORT + [_FLOODED_TO_PORT] + _UNICAST_TO_PORT_SLOW
                          if chain == "ports_fwd" else []),
                        "oifname != @veths accept", "oifname != @ports jump inactive_port",
                        *([_GROUP_COPY] if chain == "ports_fwd" else [_FLOODED_FROM_HOST]),
                        hook=f"type filter hook {hook} priority -300; policy accept;")
    lines += _rules("group_sent", *_group_destinations(subnets), deny("invalid"))
    lines += _inactive_port_chains() + _group_copy_chain()
    lines += drop_chains("bridge", network_id, "baudit", "accept")
    lines.append("}")
    return lines


_GROUP_COPY = "meta pkttype { broadcast, multicast } ether type { ip, ip6 } goto group_copy"
#: the common frame, a unicast one to an enforced port with that container's MAC, leaves on
#: its first rule after the group compare (two lookups: the port and MAC pair, the port):
#: each rule a frame walks costs ~0.1 us of CPU here (bench/results/2026-11-30-perfchk.md);
#: the rules after it see flooded copies, group copies and other ports
_UNICAST_TO_PORT = ["ether type ip oifname . ether daddr . ip daddr @ids4 oifname @ports accept",
                    "ether type ip6 oifname . ether daddr . ip6 daddr @ids6 oifname @ports accept"]
#: ... with its MAC and address: the port's MAC and IP addresses must be one container's
#: (``ids4``/``ids6``; its link-local, ``ll6``; an ARP frame carries no IP header), else
#: the inet table would judge the flow to the IP address and the bridge deliver it to the
#: MAC's container (U17-F3): not a member's address there, as eBPF says it
_UNICAST_TO_PORT_SLOW = [
    "ether type ip6 ip6 daddr fe80::/10 oifname . ip6 daddr @ll6 oifname @ports accept",
    "ether type arp oifname @ports accept",
    f"oifname @ports @ll,7,1 0 {deny('not-member')}"]
#: a unicast frame (the group bit of its destination MAC clear: ``@ll,7,1 0``) to an enforced
#: port that is not that container's MAC: a copy the bridge flooded because it has not learned
#: the destination yet (br_input.c ``br_handle_frame_finish`` -> ``br_flood``). Judged by its
#: addresses it would pass wherever its flow may go, so a third container would read the first
#: packets of others' flows (a new member's, or any flow whose fdb entry aged out). Dropped
#: without a reason, in both modes, as eBPF's to_container does (not a policy verdict: not in
#: show, log or metrics). Pending and quarantined ports: ``inactive_port`` drops them alike.
_FLOODED_TO_PORT = 'oifname @ports @ll,7,1 0 oifname . ether daddr != @macs counter drop comment "flooded copy"'
#: the same for a frame the host sends into the network (ports_out: no pkttype there)
_FLOODED_FROM_HOST = '@ll,7,1 0 oifname . ether daddr != @macs counter drop comment "flooded copy"'


def _group_copy_chain() -> list:
    """A member's broadcast or multicast frame, the copy the bridge floods to one other
    enforced port (the forward hook runs once per copy, br_forward.c ``__br_forward``;
    br_netfilter's inet forward then lets it pass, see ``_base_chains``): passes when the
    two ports' identities (``pid``) are the same one and its members may send each other
    anything (``intra``), else dropped as ``no-rule``. ND and MLD are no policy's (address
    resolution crosses segments). IGMP is for the host (the bridge's multicast snooping, a
    querier): a copy of a member's report to another member is dropped without a reason,
    not a policy verdict (U17-F1: it carried any payload across segments)."""
    nd = "icmpv6 type { " + ", ".join(ns.ND_TYPES + ns.MLD_TYPES) + " }"
    return _rules("group_copy", f"{nd} accept", 'ip protocol igmp counter drop comment "igmp copy"',
                  "meta mark set iifname map @pid oifname . meta mark @pidk meta mark @intra accept",
                  deny("no-rule"))


def _group_destinations(subnets: Iterable[str]) -> list:
    """Rules returning a group-MAC frame whose IP destination is a group address (IPv4
    multicast, the limited broadcast, a subnet's broadcast; IPv6 multicast) or that is not
    IP (ARP); the caller drops the rest."""
    bcast = sorted(str(n.broadcast_address) for n in map(ipaddress.ip_network, subnets)
                   if n.version == 4 and n.prefixlen < 31)
    groups4 = ", ".join(["224.0.0.0/4", "255.255.255.255"] + bcast)
    return [f"ether type ip ip daddr {{ {groups4} }} return",
            "ether type ip6 ip6 daddr ff00::/8 return",
            "ether type != { ip, ip6 } return"]


def _inactive_port_chains() -> list:
    """A frame leaving through a quarantined or pending port: judged (dropped, logged)
    when it is meant for that container -- to its MAC, or an ARP request or neighbour
    solicitation for one of its addresses; a flooded copy meant for others is dropped
    without a log line (audit mode: passed without one)."""
    return (_rules("inactive_port",
                   "oifname . ether daddr @macs goto inactive_judged",
                   "ether type arp oifname . arp daddr ip @arp4 goto inactive_judged",
                   "icmpv6 type nd-neighbor-solicit oifname . @th,64,128 @na6 goto inactive_judged",
                   f"{SETTING_KEY} @baudit accept",
                   'counter drop comment "flooded copy"')   # no reason: not in show, log, metrics
            # the sender is named OUTSIDE (as eBPF names it): its pair in audit mode (gaudits)
            + _rules("inactive_judged", f"meta mark set {OUTSIDE}", f"oifname @quarantined {deny('quarantined')}",
                     deny("pending")))


# --- whole network --------------------------------------------------------------------------
def network_script(network_id: str, net, elements: Mapping, keep: str = "") -> str:
    """Script that atomically replaces both tables of a network, elements included.

    ``net``: a NetworkSpec (bridge, subnets, internal); ``elements``:
    ``{set: {element: value}}`` of every set; ``keep``: lines that put the
    learned DNS addresses back (``fqdn.keep_script``).
    """
    t = table_name(network_id)
    lines = [f"table inet {t} {{ }}", f"delete table inet {t}",
             f"table bridge {t} {{ }}", f"delete table bridge {t}"]
    lines += render_inet(network_id, net)
    lines += render_bridge(network_id, net.bridge, net.subnets)
    lines += _element_lines("add", t, elements)
    return "\n".join(lines) + "\n" + keep


def skeleton_script(network_id: str, net) -> str:
    """Both tables without elements (the reference for rule-by-rule drift)."""
    return "\n".join(render_inet(network_id, net) + render_bridge(network_id, net.bridge, net.subnets)) + "\n"


def delete_script(network_id: str) -> str:
    t = table_name(network_id)
    return (f"table inet {t} {{ }}\ndelete table inet {t}\n"
            f"table bridge {t} {{ }}\ndelete table bridge {t}\n")
