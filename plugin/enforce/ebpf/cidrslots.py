"""The service slots of one CIDR-map prefix, and who a CIDR counter belongs to (pure).

The program scans a prefix's slots in order and stops at the first that
allows the flow (bpf/lib/policy.h ``cidr_lookup``: one map lookup, at most
CIDR_SLOTS compares, one counter bumped). For its one counter to stand for
every rule that allows the flow, as nftables counts (its CIDR sets cut a
segment's tcp/udp entries into disjoint address x port boxes, each counted
to every entry covering it; ``_icmp`` and ``_any`` sets come after the
ported one), a prefix covered by several entries of one protocol whose
ports overlap gets *piece* slots before its entries' own:

* per protocol (tcp, udp, icmp), the port pieces two or more of the
  prefix's entries share, each naming the prefix itself (its address and
  length) and the piece's ports;
* then the entries of that protocol that still own a port alone;
* last, ``any``: a piece naming the prefix when several ``any`` entries
  cover it, else the one entry.

The reader (:class:`Owners`) gives a CIDR counter key ``(direction,
identity, family, cidr, proto, lo, hi)`` to every entry of that direction,
identity and family whose CIDR contains ``cidr``, of the same protocol, and
whose ports contain lo..hi. For an entry's own slot that is the entry
alone (were another entry to cover it all, the slot would hold no port of
its own and is not written); for a piece, every entry that allows its
packets. Same cost per packet as one slot per entry; a prefix holds at most
CIDR_SLOTS slots, pieces included (maps.EncodeError otherwise).
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

ANY = "any"


def _net(entry):
    return ipaddress.ip_network(entry.cidr, strict=False)


def pieces(ranges: Iterable) -> list:
    """``[(lo, hi, owners)]``: the ports of ``ranges`` (``{label: (lo, hi)}`` items,
    inclusive) cut where the set of ranges covering them changes, in order;
    ``owners`` is the frozenset of labels covering the piece."""
    ranges = list(ranges)
    cuts = sorted({lo for _l, (lo, _h) in ranges} | {hi + 1 for _l, (_lo, hi) in ranges})
    out = []
    for lo, nxt in zip(cuts, cuts[1:]):
        owners = frozenset(label for label, (rlo, rhi) in ranges if rlo <= lo and nxt - 1 <= rhi)
        if owners:
            out.append((lo, nxt - 1, owners))
    return out


def prefix_slots(net, covering: Iterable) -> list:
    """The slots of prefix ``net`` (an ip_network) covered by ``covering`` (CidrEntry,
    each containing ``net``), in scan order: ``[(proto, plen, lo, hi, network
    address text)]`` (see the module docstring)."""
    by_proto: dict = {}
    for e in covering:
        by_proto.setdefault(e.proto, {})[(e.proto, _net(e), e.lo, e.hi)] = (e.lo, e.hi)
    slots = []
    for proto in sorted(p for p in by_proto if p != ANY):
        services = by_proto[proto]
        cut = pieces(services.items())
        alone = {next(iter(owners)) for _lo, _hi, owners in cut if len(owners) == 1}
        slots += [(proto, net.prefixlen, lo, hi, str(net.network_address))
                  for lo, hi, owners in cut if len(owners) > 1]
        slots += [(p, n.prefixlen, lo, hi, str(n.network_address))
                  for p, n, lo, hi in sorted(alone, key=_order)]
    services = sorted(by_proto.get(ANY, ()), key=_order)
    if len(services) > 1:
        slots.append((ANY, net.prefixlen, 0, 0, str(net.network_address)))
    else:
        slots += [(p, n.prefixlen, lo, hi, str(n.network_address)) for p, n, lo, hi in services]
    return slots


def _order(service: tuple) -> tuple:
    proto, net, lo, hi = service
    return (proto, net.prefixlen, int(net.network_address), lo, hi)


class Owners:
    """Which entries a CIDR counter key belongs to, for one policy's CIDR entries.

    ``cidrs``: CidrEntry values. :meth:`of` walks the supernets of the key's
    CIDR (at most 129), not the entries."""

    def __init__(self, cidrs: Iterable):
        self.by_net: dict = {}
        for e in cidrs:
            self.by_net.setdefault((e.direction, e.identity, e.family, _net(e)), set()).add(e.key)

    def of(self, key: tuple) -> list:
        """The CidrEntry keys counter ``key`` counts for, sorted; ``[key]`` when none
        (an entry since removed)."""
        direction, identity, family, cidr, proto, lo, hi = key
        net = ipaddress.ip_network(cidr, strict=False)
        found = set()
        for plen in range(net.prefixlen, -1, -1):
            for k in self.by_net.get((direction, identity, family, net.supernet(new_prefix=plen)), ()):
                if k[4] == proto and (proto == ANY or (k[5] <= lo and hi <= k[6])):
                    found.add(k)
        return sorted(found) or [key]
