"""Permanent neighbour entries for a network's endpoints, on its bridge (the host side).

Why they exist. The host routes between a network's subnets: the bridge carries
every gateway, so a flow from a container in one subnet to a container in another
goes container -> gateway -> host's forwarding -> bridge -> container, and the
host needs the destination's MAC. Without an entry it solicits it (ARP, or an
IPv6 neighbour solicitation). For a *forwarded* IPv6 packet the kernel sends
that solicitation from the bridge's own link-local address (the packet's source
is not the host's, ``ndisc_solicit``), and a bridge holds that address tentative
for 1-2 s after it gets carrier -- when the network's first container comes up
(duplicate address detection: up to 1 s of random delay, then 1 s). Meanwhile
``ndisc_send_ns`` sends nothing and the neighbour timer tries again after 1 s:
the first connection across the subnets of a fresh network waited 1-2 s, and
its client sent its SYN twice (seen on both backends; docs in
bench/results/2026-11-30-nd9.md).

secnet knows each endpoint's MAC and addresses, so it writes them as PERMANENT
entries on the bridge, as Cilium does for its endpoints: the host never
resolves a container's address and never probes it. An entry only tells the
host where to send; what a container may send is still judged by the
anti-spoofing of its port (MAC + IP per port, on both backends).

Functions take a pyroute2 ``IPRoute`` and a bridge's ifindex; the daemon calls
them through :class:`plugin.kernel.links.Netlink`, on its netlink thread.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Iterable, Mapping, Optional

from pyroute2.netlink.exceptions import NetlinkError

NUD_PERMANENT = 0x80


def entries(mac: str, addresses: Iterable[Optional[str]]) -> dict:
    """``{address: mac}`` for an endpoint's addresses (CIDR or plain; empty ones skipped)."""
    return {str(ipaddress.ip_interface(a).ip): mac.lower() for a in addresses if a}


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def ensure(ipr, index: int, wanted: Mapping[str, str]) -> None:
    """Each ``address -> mac`` of ``wanted`` is a permanent entry on link ``index``
    (``replace``: an entry the kernel learned, or another MAC's, is overwritten)."""
    for address, mac in wanted.items():
        ipr.neigh("replace", ifindex=index, dst=address, lladdr=mac,
                  family=_family(address), state=NUD_PERMANENT)


def permanent(ipr, index: int) -> dict:
    """``{address: mac}`` of the permanent entries on link ``index``."""
    out = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_neighbours(family=family, ifindex=index):
            if msg["state"] & NUD_PERMANENT and msg.get("NDA_LLADDR"):
                out[msg.get("NDA_DST")] = msg.get("NDA_LLADDR").lower()
    return out


def _lladdr(ipr, index: int, address: str) -> Optional[str]:
    """The MAC of the entry for ``address`` on link ``index``, None without one
    (one RTM_GETNEIGH: no dump of the table)."""
    try:
        found = ipr.neigh("get", ifindex=index, dst=address, family=_family(address))
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.ENODEV):
            return None
        raise
    lladdr = found[0].get("NDA_LLADDR") if found else None
    return lladdr.lower() if lladdr else None


def _delete(ipr, index: int, address: str) -> bool:
    try:
        ipr.neigh("del", ifindex=index, dst=address, family=_family(address))
        return True
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV):
            raise
        return False


def remove(ipr, index: int, unwanted: Mapping[str, str]) -> int:
    """Delete each ``address -> mac`` of ``unwanted`` that still points at that MAC
    (another endpoint may have taken the address since). Returns how many went."""
    return sum(_delete(ipr, index, address) for address, mac in unwanted.items()
               if _lladdr(ipr, index, address) == mac.lower())


def prune(ipr, index: int, wanted: Mapping[str, str]) -> int:
    """Delete the permanent entries on link ``index`` that ``wanted`` does not name
    with that MAC (endpoints that went while the daemon was down). Returns how many."""
    stale = [a for a, m in permanent(ipr, index).items() if wanted.get(a, "").lower() != m]
    return sum(_delete(ipr, index, address) for address in stale)
