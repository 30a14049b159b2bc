"""nftables backend: a compiled policy and its members as nft script text.

Kernel background. Each secnet network gets two tables named
``secnet_<network-id[:12]>``:

* ``table bridge``: runs on the frames of the network's bridge ports, before
  anything else. It knows every port of the network (``veths``) and the
  enforced ones (``ports``). A port that is not enforced yet (pending: its
  segment is not known) or is quarantined gets nothing in or out. It also
  drops spoofed frames: the source MAC, IPv4/IPv6 source address and ARP
  sender of a port must be the ones the network gave it (``ids4``/``ids6``).
* ``table inet``: with ``br_netfilter`` the bridged IP traffic also passes
  the inet ``forward`` hook, with the bridge as both input and output
  device; conntrack works there, so replies to allowed flows pass
  (``ct state established,related``). New flows are sent by a verdict map
  keyed by destination address to the destination segment's chain
  ``to_<segment>``, which holds one rule per (source segment, grant) matching
  the source segment's address set. Joins and leaves are element changes of
  those sets and maps; the rules only change when the policy does.

Everything for one network is rendered as one script and applied with one
``nft -f`` call, which the kernel commits as one transaction: there is never
a moment with a half-applied ruleset. This module renders text and runs
``nft``; it decides nothing about the semantics, which live in
``segmentation.compiler``.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Optional

from ..compiler import CompiledPolicy
from ..rules import Service
from . import nft_northsouth as ns
from .nft_runner import TABLE_PREFIX, NftError, NftRunner  # noqa: F401 (re-exported)
from .nft_runner import PASSED_MARK
from .nft_verdicts import OUTSIDE, deny, drop_chains, pair_drop_tag, quote as _q

ND_TYPES, MLD_TYPES = ns.ND_TYPES, ns.MLD_TYPES


@dataclass(frozen=True)
class Port:
    """One endpoint as the datapath sees it."""

    endpoint_id: str
    name: str                  # host side of the veth (the bridge port)
    mac: str
    ipv4: Optional[str] = None  # plain address
    ipv6: Optional[str] = None
    segment: Optional[str] = None
    quarantine: Optional[str] = None
    published: tuple = ()       # (proto, host_ip or "", host_port, container_port)

    @property
    def active(self) -> bool:
        return self.segment is not None and self.quarantine is None


def table_name(network_id: str) -> str:
    return TABLE_PREFIX + network_id[:12]


def seg_id(segment: str) -> str:
    """An nft identifier for a segment name, unique and readable."""
    out = []
    for ch in segment:
        out.append({"_": "__", "-": "_d", ".": "_p"}.get(ch, ch))
    return "".join(out)


def grant_tag(src: str, dst: str, origin: str) -> str:
    """The comment on a grant's rules; maps counters back to (src, dst, origin)."""
    return "g" + hashlib.sha1(f"{src}>{dst}>{origin}".encode()).hexdigest()[:15]


def cidr_tag(seg: str, direction: str, origin: str) -> str:
    return "c" + hashlib.sha1(f"{direction}>{seg}>{origin}".encode()).hexdigest()[:15]


def _match(service: Service, family: int) -> str:
    """nft match for a service; '' matches everything."""
    if service.proto == "any":
        return ""
    if service.proto == "icmp":
        return "icmp type echo-request" if family == 4 else "icmpv6 type echo-request"
    if (service.lo, service.hi) == (0, 65535):
        return f"meta l4proto {service.proto}"
    ports = str(service.lo) if service.lo == service.hi else f"{service.lo}-{service.hi}"
    return f"{service.proto} dport {ports}"


def _rule(*parts: str) -> str:
    return "    " + " ".join(p for p in parts if p)


# --- the inet table ---------------------------------------------------------

def _segment_sets(compiled: CompiledPolicy, ports: list) -> list:
    lines = []
    for seg in compiled.segments:
        for fam, typ, attr in ((4, "ipv4_addr", "ipv4"), (6, "ipv6_addr", "ipv6")):
            addrs = sorted({getattr(p, attr) for p in ports if p.active and p.segment == seg
                            and getattr(p, attr)})
            elems = f" elements = {{ {', '.join(addrs)} }};" if addrs else ""
            lines.append(f"  set s_{seg_id(seg)}_{fam} {{ type {typ};{elems} }}")
    return lines


def _verdict_maps(compiled: CompiledPolicy, ports: list) -> list:
    lines = []
    known = set(compiled.segments)
    for name, prefix in (("dst", "to_"), ("src", "eg_")):
        for fam, typ, attr in ((4, "ipv4_addr", "ipv4"), (6, "ipv6_addr", "ipv6")):
            elems = sorted(f"{getattr(p, attr)} : jump {prefix}{seg_id(p.segment)}" for p in ports
                           if p.active and p.segment in known and getattr(p, attr))
            body = f" elements = {{ {', '.join(elems)} }};" if elems else ""
            lines.append(f"  map {name}{fam} {{ type {typ} : verdict;{body} }}")
    return lines


def _to_chain(bridge: str, compiled: CompiledPolicy, dst: str) -> list:
    sid = seg_id(dst)
    lines = [f"  chain to_{sid} {{", _rule("iifname", "!=", _q(bridge), "goto", f"in_{sid}")]
    for (src, d), grants in sorted(compiled.east_west.items()):
        if d != dst:
            continue
        for grant in grants:
            tag = grant_tag(src, dst, grant.origin)
            for fam, sel in ((4, "ip saddr"), (6, "ip6 saddr")):
                lines.append(_rule(sel, f"@s_{seg_id(src)}_{fam}", _match(grant.service, fam),
                                   "counter accept comment", _q(tag)))
    # A hairpin flow (a member reaching a published port) that no east-west
    # grant allows is judged like any other flow to a published port.
    lines.append(_rule("ct status dnat goto", f"in_{sid}"))
    lines += _pair_drop_counters(compiled, dst)
    lines.append(_rule(deny("no-rule")))
    lines.append("  }")
    return lines


def _pair_drop_counters(compiled: CompiledPolicy, dst: str) -> list:
    """Count (no verdict) what ``to_<dst>`` is about to drop, per source segment."""
    return [_rule(sel, f"@s_{seg_id(src)}_{fam}", "counter comment", _q(pair_drop_tag(src, dst)))
            for src in compiled.segments for fam, sel in ((4, "ip saddr"), (6, "ip6 saddr"))]


def _in_chain(compiled: CompiledPolicy, dst: str) -> list:
    """Traffic from outside the network to segment ``dst``."""
    lines = [f"  chain in_{seg_id(dst)} {{"]
    drops = _rule("counter comment", _q(pair_drop_tag(OUTSIDE, dst)))
    if compiled.internal:
        lines.append(drops)
        lines.append(_rule(deny("internal")))
    elif dst not in compiled.ingress:
        # Docker's behaviour: published ports (DNAT'd flows) and the host itself.
        lines.append(_rule("ct status dnat counter accept comment", _q("allow:published")))
        lines.append(_rule("fib saddr type local counter accept comment", _q("allow:host")))
        lines.append(drops)
        lines.append(_rule(deny("no-rule")))
    else:
        for g in compiled.ingress[dst]:
            sel = "ip saddr" if g.family == 4 else "ip6 saddr"
            lines.append(_rule(sel, g.cidr, _match(g.service, g.family), "counter accept comment",
                               _q(cidr_tag(dst, "in", g.origin))))
        lines.append(drops)
        lines.append(_rule(deny("no-rule")))
    lines.append("  }")
    return lines


def _egress_chain(compiled: CompiledPolicy, src: str) -> list:
    lines = [f"  chain eg_{seg_id(src)} {{"]
    drops = _rule("counter comment", _q(pair_drop_tag(src, OUTSIDE)))
    if compiled.internal:
        lines.append(drops)
        lines.append(_rule(deny("internal")))
    else:
        for g in compiled.egress.get(src, ()):
            sel = "ip daddr" if g.family == 4 else "ip6 daddr"
            lines.append(_rule(sel, g.cidr, _match(g.service, g.family), "counter accept comment",
                               _q(cidr_tag(src, "out", g.origin))))
        if compiled.egress_default == "allow":
            lines.append(_rule("counter accept comment", _q("allow:egress")))
        else:
            lines.append(drops)
            lines.append(_rule(deny("egress")))
    lines.append("  }")
    return lines


def _forward_chain(bridge: str) -> list:
    br = _q(bridge)
    return [
        "  chain forward {",
        "    type filter hook forward priority filter - 5; policy accept;",
        _rule("iifname", "!=", br, "oifname", "!=", br, "accept"),
        # what this chain does not drop, Docker's DOCKER-USER lets through (dockerfw)
        _rule(f"meta mark set meta mark or {PASSED_MARK:#x}"),
        _rule("ct state established,related accept"),
        _rule("ct state invalid", deny("invalid")),
        # address resolution and multicast membership (sources checked in the bridge table)
        _rule("icmpv6 type {", ", ".join(ND_TYPES + MLD_TYPES), "} accept"),
        _rule("ip protocol igmp accept"),
        _rule("oifname", br, "ip daddr vmap @dst4"),
        _rule("oifname", br, "ip6 daddr vmap @dst6"),
        _rule("oifname", br, deny("not-member")),
        _rule("ip saddr vmap @src4"),
        _rule("ip6 saddr vmap @src6"),
        _rule(deny("not-member")),
        "  }",
    ]


def render_inet(table: str, bridge: str, compiled: CompiledPolicy, ports: list,
                subnets: Iterable[str] = ()) -> list:
    lines = [f"table inet {table} {{"]
    lines += _segment_sets(compiled, ports)
    lines += _verdict_maps(compiled, ports)
    for seg in compiled.segments:
        lines += _to_chain(bridge, compiled, seg)
        lines += _in_chain(compiled, seg)
        lines += _egress_chain(compiled, seg)
    lines += _forward_chain(bridge)
    lines += ns.render(table, bridge, subnets, compiled.internal, ports)
    lines += drop_chains("inet", table[len(TABLE_PREFIX):])
    lines.append("}")
    return lines


# --- the bridge table -------------------------------------------------------

def _na_target(addr: str) -> str:
    return hex(int(ipaddress.IPv6Address(addr)))


def link_local(mac: str) -> str:
    """The EUI-64 link-local address a container derives from its MAC (Docker's default)."""
    b = [int(x, 16) for x in mac.split(":")]
    iid = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


def _bridge_elements(ports: list) -> dict:
    """Elements of each bridge-table set, as nft element text."""
    el = {"veths": [], "ports": [], "quarantined": [], "macs": [], "ids4": [], "ids6": [], "na6": [],
          "ll6": []}
    for p in ports:
        name = _q(p.name)
        el["veths"].append(name)
        if p.quarantine is not None:
            el["quarantined"].append(name)
        if not p.active:
            continue
        el["ports"].append(name)
        el["macs"].append(f"{name} . {p.mac}")
        ll = link_local(p.mac)
        el["ll6"].append(f"{name} . {ll}")
        el["na6"].append(f"{name} . {_na_target(ll)}")
        if p.ipv4:
            el["ids4"].append(f"{name} . {p.mac} . {p.ipv4}")
        if p.ipv6:
            el["ids6"].append(f"{name} . {p.mac} . {p.ipv6}")
            el["na6"].append(f"{name} . {_na_target(p.ipv6)}")
    return el


BRIDGE_SETS = {
    "veths": "type ifname;", "ports": "type ifname;", "quarantined": "type ifname;",
    "macs": "type ifname . ether_addr;", "ids4": "type ifname . ether_addr . ipv4_addr;",
    "ids6": "type ifname . ether_addr . ipv6_addr;", "na6": "typeof iifname . @th,64,128;",
    "ll6": "type ifname . ipv6_addr;",
}


def render_bridge(table: str, ports: list) -> list:
    el = _bridge_elements(ports)
    lines = [f"table bridge {table} {{"]
    for name, typ in BRIDGE_SETS.items():
        elems = f" elements = {{ {', '.join(sorted(el[name]))} }};" if el[name] else ""
        lines.append(f"  set {name} {{ {typ}{elems} }}")
    # What a container may send from a link-local or unspecified source: address
    # resolution, DAD and multicast listener reports. Never router adverts or
    # redirects: a container must not become other containers' router.
    sendable = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit") + MLD_TYPES
    from_link_local = "ip6 saddr { ::, fe80::/10 } icmpv6 type { " + ", ".join(sendable) + " }"
    lines += [
        "  chain ports_in {",
        "    type filter hook prerouting priority -300; policy accept;",
        _rule("iifname != @veths accept"),
        _rule("iifname @quarantined", deny("quarantined")),
        _rule("iifname != @ports", deny("pending")),
        _rule("iifname . ether saddr != @macs", deny("spoofed")),
        _rule("ether type arp iifname . arp saddr ether . arp saddr ip != @ids4", deny("spoofed")),
        _rule("ether type arp accept"),
        _rule("ether type ip iifname . ether saddr . ip saddr != @ids4", deny("spoofed")),
        _rule("ether type ip accept"),
        _rule("icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @na6", deny("spoofed")),
        _rule("ip6 saddr fe80::/10 iifname . ip6 saddr != @ll6", deny("spoofed")),
        _rule(from_link_local, "accept"),
        _rule("ether type ip6 iifname . ether saddr . ip6 saddr != @ids6", deny("spoofed")),
        _rule("icmpv6 type { nd-router-advert, nd-redirect }", deny("spoofed")),
        _rule("ether type ip6 accept"),
        _rule(deny("ethertype")),
        "  }",
    ]
    for chain, hook in (("ports_fwd", "forward"), ("ports_out", "output")):
        lines += [
            f"  chain {chain} {{",
            f"    type filter hook {hook} priority -300; policy accept;",
            _rule("oifname != @veths accept"),
            _rule("oifname @quarantined", deny("quarantined")),
            _rule("oifname != @ports", deny("pending")),
            "  }",
        ]
    lines += drop_chains("bridge", table[len(TABLE_PREFIX):])
    lines.append("}")
    return lines


# --- whole network and deltas ----------------------------------------------

def render_network(network_id: str, bridge: str, compiled: CompiledPolicy, ports: Iterable[Port],
                   subnets: Iterable[str] = ()) -> str:
    """Script that atomically replaces both tables of a network."""
    ports = list(ports)
    t = table_name(network_id)
    lines = [f"table inet {t} {{ }}", f"delete table inet {t}",
             f"table bridge {t} {{ }}", f"delete table bridge {t}"]
    lines += render_inet(t, bridge, compiled, ports, subnets)
    lines += render_bridge(t, ports)
    return "\n".join(lines) + "\n"


def render_delete_network(network_id: str) -> str:
    t = table_name(network_id)
    return (f"table inet {t} {{ }}\ndelete table inet {t}\n"
            f"table bridge {t} {{ }}\ndelete table bridge {t}\n")


def port_elements(network_id: str, port: Port) -> list:
    """(family, set, element) triples that ``port`` puts into the tables."""
    t = table_name(network_id)
    out = []
    if port.active:
        sid = seg_id(port.segment)
        for fam, addr in ((4, port.ipv4), (6, port.ipv6)):
            if addr:
                out += [("inet", f"{t} s_{sid}_{fam}", addr),
                        ("inet", f"{t} dst{fam}", f"{addr} : jump to_{sid}"),
                        ("inet", f"{t} src{fam}", f"{addr} : jump eg_{sid}")]
        out += ns.published_elements(t, port)
    for name, elems in _bridge_elements([port]).items():
        out += [("bridge", f"{t} {name}", e) for e in elems]
    return out


def render_port_change(network_id: str, old: Optional[Port], new: Optional[Port]) -> str:
    """Script moving the elements of one port from ``old`` to ``new`` (either may be None).

    Removal is written as add-then-delete so that it succeeds whether or not
    the element is there: the script is idempotent, and one transaction.
    """
    before = set(port_elements(network_id, old)) if old else set()
    after = set(port_elements(network_id, new)) if new else set()
    lines = []
    for fam, target, elem in sorted(before - after):
        lines.append(f"add element {fam} {target} {{ {elem} }}")
        lines.append(f"delete element {fam} {target} {{ {elem.split(' : ')[0]} }}")
    for fam, target, elem in sorted(after - before):
        lines.append(f"add element {fam} {target} {{ {elem} }}")
    return "\n".join(lines) + ("\n" if lines else "")
