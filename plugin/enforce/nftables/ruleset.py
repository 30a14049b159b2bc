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
  first packet was let through). An ICMP error of a flow (``related``)
  from a member that is no end of that flow is dropped as ``invalid``
  (``@self4``/``@self6``: :func:`_forged_errors`, U23-F3). A new flow's two ends are turned into
  *identities* (``segmentation.identities``): the source's into the packet
  mark (``meta mark set ip saddr map @id4``), the destination's into the
  connection mark (``ct mark set ip daddr map @id4``); an address that is
  not the network's is ``OUTSIDE``. The verdict is then a lookup of
  ``meta mark . ct mark [. protocol . port]`` in the policy sets
  (``pol_*``), of ``identity . address [...]`` in the CIDR sets
  (``eg*``/``in*``), and of the setting sets (``egress_allow``,
  ``internal``, ``audit``, ``restricted``). Their elements come from
  ``elements``; every set of the policy has per-element counters, but for
  ``pol_port`` (one-port rules, most of a large policy), whose matches are
  counted in the dynamic set ``hit_port`` of the same key: an element (with its
  counter) is made there by the first packet that matches it, so a policy edit
  adds and deletes plain elements (``elements.COUNTED_IN``).

So the rules never change while the network lives: a join, a leave, a
policy edit, a new segment, a quarantine or a mode switch is a set-element
delta (:func:`delta_script`), one transaction. Only :func:`network_script`
writes rules (create, restore, drift repair), replacing both tables in one
transaction. What policy lets through is marked :data:`PASSED_MARK` (chain
``pass``), which Docker's ``DOCKER-USER`` chain requires (``plugin.enforce.hostfw.dockerfw``).
The marks hold identities only from the moment a flow's first packet is
judged until it leaves the chain: nothing else reads them.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping

from plugin.kernel.marks import JUDGED_FLOW_MARK, LEARNED_FLOW_MARK, PASSED_MARK
from segmentation.identities import HOST, OUTSIDE, PENDING, QUARANTINED

from . import fqdn
from . import northsouth as ns
from .drops import DYNAMIC_SETS, SETTING_KEY, deny, drop_chains, quote as _q
from .elements import SCHEMAS, ElementDelta
from .bridgetable import render_bridge
from .nfttext import rules as _rules, set_declaration, table_name

FORMAT = 18   # bump when the ruleset changes shape: drift() then reports it (18: hit_port + self4/6 + DAD)
ND = "icmpv6 type { " + ", ".join(ns.ND_TYPES + ns.MLD_TYPES) + " }"
#: ``JUDGED_FLOW_MARK``: the ``ct mark`` bit of a flow that this table judged and let through (chain ``pass``).
#: A flow's later packets pass on its conntrack state alone only with it (or once answered,
#: ``established``): a conntrack entry can be confirmed without secnet's verdict -- the
#: bridge confirms a broadcast or multicast frame's entry as it passes a copy up to the host
#: (br_netfilter_hooks.c ``br_nf_local_in``), whatever the host's chains then do with it --
#: and such an entry must not open its flow (U17-F6). Free of ``LEARNED_FLOW_MARK`` and of
#: the 16-bit identities the judgement writes there.
_JUDGED = f"ct mark & {JUDGED_FLOW_MARK:#010x} == {JUDGED_FLOW_MARK:#010x}"
_PROTO_NAMES = {6: "tcp", 17: "udp"}
#: an --internal network in audit mode (both setting sets hold their element)
_INTERNAL_AUDIT = f"{SETTING_KEY} @internal {SETTING_KEY} @audit"
FQDN_SET_SIZE = 16384   # elements per learned-address set (plugin.dns.store bounds the network)




# --- sets -----------------------------------------------------------------------------------
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
        # a one-port rule's element is counted in the hit set (its first match makes its
        # element there, with the counter): pol_port's elements carry none (COUNTED_IN)
        f"{pair} . {ported} @pol_port update @hit_port {{ {pair} . {ported} }} goto pass",
        # (the hit set full, or no memory for its element: the update fails, the rule
        # above does not match; the flow is allowed all the same, uncounted)
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


def _forged_errors(verdict: str) -> list:
    """Rules ending in ``verdict`` for an ICMP/ICMPv6 error related to a tracked flow
    whose outer source is a member (an address the network gave a container: ``@self4``
    holds ``a . a`` for each) that is no end of the flow it quotes (U23-F3).

    For a related packet nft's ``ct`` expressions read the quoted flow's entry (the
    master); the four lookups ``saddr . <end>`` in ``@self4``/``@self6`` miss unless the
    source is one of the flow's original or reply addresses (a published port's error
    from its container: its reply source, the DNAT'd address). Linux checks only the
    error's outer destination (nf_conntrack_inet_error); the gateway's and routers'
    errors (no members) pass as before."""
    out = []
    for fam, ip, icmp in ((4, "ip", "icmp"), (6, "ip6", "ipv6-icmp")):
        src = f"{ip} saddr"
        ends = " ".join(f"{src} . ct {d} {ip} {a} != @self{fam}"
                        for d in ("original", "reply") for a in ("saddr", "daddr"))
        out.append(f"ct state related meta l4proto {icmp} {src} . {src} @self{fam} {ends} {verdict}")
    return out


def _base_chains(bridge: str, subnets: Iterable[str] = ()) -> list:
    br = _q(bridge)
    # the link's IPv6 destinations: group, link-local, the network's own (the gateway)
    link6 = ", ".join(["ff00::/8", "fe80::/10"] + [n for n in subnets if ":" in n])
    forward = _rules(
        "forward",
        f"iifname != {br} oifname != {br} accept",
        "ct state established goto pass",
        # an error of a flow from a third member, not one of its ends (before the
        # "confirmed" rule, which reads the quoted flow's entry as well)
        *_forged_errors(deny("invalid")),
        "ct state related goto pass",
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
        "ct state established accept",
        *_forged_errors(deny("invalid")),
        "ct state related accept",
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


def create_script(network_id: str, net, elements: Mapping) -> str:
    """Script that makes both tables of a network that has neither, elements included: one
    transaction, refused whole by the kernel (``EEXIST``, nothing written) when either table
    exists (``create table``). The kernel then holds what :func:`network_script` leaves,
    object for object and handle for handle (``nft -j list table`` differs only in the
    table's own handle, a count of the namespace's tables ever made).

    Why a second form. libnftables 1.0.6 evaluates a ``table … { }`` block, a ``delete
    table``, an ``add rule`` or an ``add element`` on a cache of the whole ruleset: every
    table's chains, sets and objects are dumped first, ~1 ms of CPU per other network on the
    host (``bench/results/2026-12-02-netcreate2.md``). ``create table``, ``add chain``,
    ``add set``/``add map`` (elements inline), ``add limit`` need only the list of tables.
    So each table's block is written as commands in the order the library expands a block
    into (``nft_cmd_expand``), which is the order the kernel numbers the objects in: every
    chain (a base chain with its hook), the limits, the sets with their elements, then each
    chain's rules as an ``add chain NAME { rules }`` block (the chain's second add is a
    no-op update). ``elements``: ``{set: {element: value}}`` as :func:`network_script`'s.
    Raises ValueError for a line of the rendered tables it has no command for.
    """
    left = {name: els for name, els in elements.items() if els}
    lines = []
    for block in (render_inet(network_id, net), render_bridge(network_id, net.bridge, net.subnets)):
        lines += _commands(block, left)
    if left:
        raise ValueError(f"elements of sets the tables do not declare: {sorted(left)}")
    return "\n".join(lines) + "\n"


def _commands(block: list, elements: dict) -> list:
    """One table's block (``render_inet``'s lines) as commands; the elements of its sets are
    taken out of ``elements``."""
    head = block[0].split()
    if len(head) != 4 or head[0] != "table" or head[3] != "{" or block[-1] != "}":
        raise ValueError(f"not a table block: {block[0]!r}")
    family, table = head[1], head[2]
    where = f"{family} {table}"
    chains, objects, sets, rules = [], [], [], []
    body, i = block[1:-1], 0
    while i < len(body):
        line = body[i]
        words = line.split(None, 2)
        if line.startswith("  chain ") and line.endswith(" {") and len(words) == 3:
            name, end = words[1], body.index("  }", i)
            inner = [r.strip() for r in body[i + 1:end]]
            hook = inner.pop(0) if inner and inner[0].startswith("type ") else ""
            chains.append(f"add chain {where} {name}" + (f" {{ {hook} }}" if hook else ""))
            if inner:
                rules += [f"add chain {where} {name} {{", *(f"  {r}" for r in inner), "}"]
            i = end + 1
            continue
        if line.startswith(("  set ", "  map ")) and line.endswith(" }") and len(words) == 3:
            kind, name, decl = words[0], words[1], words[2][:-2].rstrip()
            els = elements.pop(name, None) if SCHEMAS.get(name, ("",))[0] == family else None
            if els:
                decl += " elements = { " + ", ".join(element_text(name, e, v) for e, v in els.items()) + " };"
            sets.append(f"add {kind} {where} {name} {decl} }}")
        elif line.startswith("  limit ") and line.endswith(" }") and len(words) == 3:
            objects.append(f"add limit {where} {words[1]} {words[2]}")
        else:
            raise ValueError(f"no command for this line of table {where}: {line.strip()!r}")
        i += 1
    return [f"create table {where}"] + chains + objects + sets + rules


def skeleton_script(network_id: str, net) -> str:
    """Both tables without elements (the reference for rule-by-rule drift)."""
    return "\n".join(render_inet(network_id, net) + render_bridge(network_id, net.bridge, net.subnets)) + "\n"


def delete_script(network_id: str) -> str:
    t = table_name(network_id)
    return (f"table inet {t} {{ }}\ndelete table inet {t}\n"
            f"table bridge {t} {{ }}\ndelete table bridge {t}\n")
