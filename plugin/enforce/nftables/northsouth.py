"""nftables chains for north-south traffic: published ports, NAT, the host.

Kernel background. A remote driver gets no help from Docker for ``-p``:
secnet does what Docker's bridge driver does, in the network's inet table.

* Published ports are DNAT'd in the nat ``prerouting`` hook (traffic from
  other hosts and from containers, "hairpin") and in the nat ``output`` hook
  (traffic from the host itself) for destinations that are local addresses
  (``fib daddr type local``). The mappings live in the maps ``pub4``/``pub6``
  keyed by host address (a prefix: ``0.0.0.0/0`` means every address),
  protocol and host port, so publishing is an element change.
* Loopback (``127.0.0.1:PORT`` on the host) works because the bridge has
  ``route_localnet`` set (the driver does that) and such flows are
  masqueraded to the bridge's address; IPv6 has no equivalent of
  route_localnet, so ``[::1]:PORT`` is not published (the only gap with
  Docker's bridge, which uses a userland proxy for it): ``-p [::1]:...``
  fails at ``docker run`` (plugin/ports.py), and ``[::1]:PORT`` of a port
  published on every address is refused by the held socket.
* Loopback addresses are the host's alone. ``route_localnet`` makes the
  kernel accept 127.0.0.0/8 destinations arriving on the bridge, and a DNAT
  in prerouting happens before the kernel's martian check on any link. So
  prerouting never publishes to a 127.0.0.0/8 destination (a neighbour on
  the host's LAN that routes 127.0.0.1 to the host would reach a
  ``-p 127.0.0.1:...`` port), and new flows from the bridge to 127.0.0.0/8
  are dropped in ``host_in`` (a container that routes 127.0.0.1 to its
  gateway would reach the host's loopback-only services). Replies to the
  host's own loopback flows are established and pass.
* Hairpin flows (a container of the network reaching a published port) are
  masqueraded too, so that replies come back through the host.
* Every other flow to a published port keeps its client's address, also one
  from another Docker network on this host: that network's own rule
  (Docker's bridge driver: ``-s SUBNET ! -o ITS_BRIDGE -j MASQUERADE`` in
  iptables' nat POSTROUTING, priority srcnat) would otherwise masquerade it
  to this bridge's gateway, and a CIDR-source rule naming the client's subnet
  could never match. ``nat_keep`` runs first (srcnat - 10, before every
  masquerade of Docker's and of other secnet networks at srcnat - 5) and
  binds such flows to their own source (``snat to <saddr>``): the kernel
  runs no later NAT chain for a flow whose source mapping is bound.
* Traffic leaving the network is masqueraded (unless the network is
  internal), as on Docker's bridge.
* Filter ``input`` (container → the host's own addresses) is egress and
  ``output`` (the host → a container) is ingress: ``ruleset`` sends them
  through the same chains as forwarded traffic.
"""
from __future__ import annotations

from typing import Iterable

from .drops import quote as _q

ND_TYPES = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert")
MLD_TYPES = ("mld-listener-query", "mld-listener-report", "mld-listener-done", "mld2-listener-report")


def pub_maps() -> list:
    """The published-port maps (elements: ``elements.port_elements``)."""
    return [f"  map pub{fam} {{ type {typ} . inet_proto . inet_service : {typ} . inet_service;"
            f" flags interval; }}" for fam, typ in ((4, "ipv4_addr"), (6, "ipv6_addr"))]


def nat_chains(bridge: str, subnets: Iterable[str], internal: bool) -> list:
    """DNAT of published ports, masquerading of hairpin and outgoing flows."""
    br = _q(bridge)
    lines = _keep_chain(br, subnets) + [
        "  chain publish {",
        "    meta l4proto { tcp, udp } meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @pub4",
        "    meta l4proto { tcp, udp } meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @pub6",
        "  }",
        "  chain nat_pre {",
        "    type nat hook prerouting priority dstnat - 5; policy accept;",
        "    ip daddr 127.0.0.0/8 return",  # loopback-bound ports: the host's own flows only (nat_out)
        "    fib daddr type local jump publish",
        "  }",
        "  chain nat_out {",
        "    type nat hook output priority -105; policy accept;",
        "    ip6 daddr ::1 return",  # cannot leave lo: let the held socket refuse it
        "    fib daddr type local jump publish",
        "  }",
        "  chain nat_post {",
        "    type nat hook postrouting priority srcnat - 5; policy accept;",
        f"    oifname {br} ip saddr 127.0.0.0/8 masquerade",
    ]
    for subnet in subnets:
        sel = "ip6 saddr" if ":" in subnet else "ip saddr"
        # hairpin: (iifname is unknown in postrouting; the source tells)
        lines.append(f"    oifname {br} ct status dnat {sel} {subnet} masquerade")
        if not internal:
            lines.append(f"    {sel} {subnet} oifname != {br} masquerade")
    lines.append("  }")
    return lines


def _keep_chain(br: str, subnets: Iterable[str]) -> list:
    """Published-port flows from outside the network keep their source (see above).

    Excluded: the network's own subnets (hairpin) and 127.0.0.0/8 (loopback),
    which ``nat_post`` masquerades."""
    own4 = ", ".join(["127.0.0.0/8"] + [s for s in subnets if ":" not in s])
    own6 = ", ".join(s for s in subnets if ":" in s)
    not6 = f"ip6 saddr != {{ {own6} }} " if own6 else ""
    return [
        "  chain nat_keep {",
        "    type nat hook postrouting priority srcnat - 10; policy accept;",
        f"    oifname {br} ct status dnat ip saddr != {{ {own4} }} snat ip to ip saddr",
        f"    oifname {br} ct status dnat meta nfproto ipv6 {not6}snat ip6 to ip6 saddr",
        "  }",
    ]
