"""The interface group of a network's ports, which the bridge table's first rules rely on.

Kernel background. Base chains of the bridge family hook every bridge of the
namespace (net/bridge/br_netfilter_hooks.c, nf_hook on NFPROTO_BRIDGE: the hook
lists are per namespace), so each network's ``ports_in``/``ports_fwd``/``ports_out``
run for the frames of every other bridge too. Their first rule lets a frame of a
device outside the network's interface group go on one compare of a 32-bit
device attribute (``meta iifgroup``/``oifgroup``, ``dev->group``), where the set
lookup behind it (``iifname != @veths``: a hash of the 16-byte name) costs more
(bench/nft_guard.py). ``meta ibrname``/``obrname`` would say "not my bridge" as
cheaply, but they need ``CONFIG_NFT_BRIDGE_META``, which kernels lack (this one
does), and they would let a port of the network moved onto another bridge go
unjudged: the group moves with the device, so such a port is still judged.

Fail closed: a port in ``veths`` outside the group would skip the table, so the
group is set here, before the port is written into ``veths``, whoever created
the link (``plugin.kernel.links`` creates ports in the group already). A port
whose device does not exist yet is skipped: the link writer creates it in the
group in the same request that creates it.
"""
from __future__ import annotations

import errno
from typing import Iterable, Optional

from pyroute2.netlink.exceptions import NetlinkError

from plugin.enforce.backend import BackendError
from plugin.kernel.linkgroups import LinkGroups
from plugin.kernel.links import IPRoute, port_group

DUMP_FROM = 16   # more names than this: one dump of the links instead of a request each


class PortGroups:
    """Puts ports into their network's group; its netlink sockets are opened on first use
    in the calling thread's network namespace (the backend's) and kept. The groups of
    all links are read by :class:`plugin.kernel.linkgroups.LinkGroups` (two attributes
    of each link; pyroute2's ``get_links`` made ~25 KiB of objects of each: ~50 MiB
    and 1.7 s of CPU with 1,000 veth pairs, which the daemon's heap kept)."""

    def __init__(self):
        self._ipr: Optional[IPRoute] = None
        self._links: Optional[LinkGroups] = None

    def ensure(self, bridge: str, veths: Iterable[tuple]) -> int:
        """Set the group of ``bridge``'s ports ``veths`` (elements of the set: ``(name,)``,
        host sides of veths) where it differs; returns how many were changed. Raises
        BackendError on a failure other than a missing device: the caller then does not
        write the ports (their frames are not let through as members')."""
        names = [name for (name,) in veths]
        if not names:
            return 0
        try:
            return self._set(port_group(bridge), names)
        except OSError as exc:
            raise BackendError(f"ports of {bridge}: interface group not set: {exc}") from None

    def _set(self, group: int, names: list) -> int:
        ipr = self._open()
        if len(names) > DUMP_FROM:
            now = self._links.read()
            names = [n for n in names if n in now and now[n] != group]
        changed = 0
        for name in names:
            try:
                ipr.link("set", ifname=name, group=group)
                changed += 1
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise
        return changed

    def strays(self, bridge: str, names: Iterable[str]) -> list:
        """One line per port of ``names`` that exists outside ``bridge``'s group (drift)."""
        group = port_group(bridge)
        try:
            self._open()
            now = self._links.read()
        except OSError as exc:
            return [f"port groups cannot be read ({exc})"]
        return [f"port {name}: interface group {now[name]:#x}, not {group:#x}"
                for name in names if name in now and now[name] != group]

    def _open(self) -> IPRoute:
        if self._ipr is None:
            self._ipr, self._links = IPRoute(), LinkGroups()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._links.close()
            self._ipr = self._links = None
