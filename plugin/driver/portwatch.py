"""A member's veth taken off its network's bridge is put back within ~0.1 s.

The gap it closes: ``ip link set snvX nomaster`` (or ``master docker0``, or
``ip link del`` of the bridge) by another tool or an admin moves a container's
veth out of the bridge whose rules judge it. Nothing else notices: the
nftables tables and the eBPF programs are all still in place, the periodic
pass compares only them, and Docker does not look at links. The container is
cut off meanwhile, or, on another bridge, outside secnet's rules.

How: :class:`plugin.kernel.linkwatch.LinkWatcher` hears every link change of
the namespace; the names of secnet's host-side veths (``snv...``) are
collected and checked ``delay`` after a burst
(:class:`~plugin.kernel.debounced.Debouncer`), first without the driver's lock
and cheaply: is the veth on a bridge whose port group
(:func:`plugin.kernel.links.port_group`, which secnet gave it) is the veth's
own? The daemon's own joins announce their veths too, and pass that check
(two netlink reads). A veth that fails it is looked at again under the
driver's lock (a verb may be making it right now): when it still belongs to a
recorded endpoint and is off its network's bridge, the endpoint's veth is
ensured again (``Netlink.ensure_veth``: back on the bridge, in its group, up,
hairpin, its neighbour entries) and the reconciler checks the network's
rules (``repair_network``). A missing bridge gets the network's links made
again first, as at a restart. A deleted veth took the container's interface
with it (a veth pair goes as one): logged, nothing to put back. After a gap
in the notifications (``resync``) every recorded veth is checked.
"""
from __future__ import annotations

import logging
import threading
from typing import Optional

from plugin.kernel import links as nl
from plugin.kernel.linkwatch import RESYNC, LinkWatcher
from plugin.kernel.debounced import DebouncedWatch

log = logging.getLogger(__name__)


def port_event(event) -> bool:
    """A ``match`` for :meth:`LinkWatcher.subscribe`: a change of one of secnet's
    host-side veths, and every ``resync``. A deletion is not: the veth and its
    container's interface are gone together, nothing can be put back."""
    return event.kind == "resync" or (event.kind == "add" and event.ifname.startswith(nl.VETH_HOST_PREFIX))


class Names:
    """The last announcement of each veth heard of since the last :meth:`take`;
    ``resync`` makes it "all" (None)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last: Optional[dict] = {}

    def add(self, event) -> None:
        with self._lock:
            if event.kind == "resync" or self._last is None:
                self._last = None
            else:
                self._last[event.ifname] = event

    def take(self) -> Optional[dict]:
        """``{veth name: its last LinkEvent}`` since the last take (None: look at all)."""
        with self._lock:
            last, self._last = self._last, {}
            return last


class PortWatch(DebouncedWatch):
    """Puts the veths of ``driver``'s endpoints back on their bridges (a
    :class:`plugin.driver.driver.Driver` whose ``links`` is a
    :class:`plugin.kernel.links.Netlink`; its reconciler then checks the rules).
    ``start()`` opens the socket in the caller's thread and namespace (OSError is
    raised there); ``stop()`` ends both threads. ``put_back``: veths put back;
    ``checks``: debounced checks run."""

    thread_name = "secnet-portrepair"

    def __init__(self, driver, delay: float = 0.1):
        super().__init__(delay)
        self.driver = driver
        self.names = Names()
        self.put_back = self.checks = 0
        self._bridges: dict = {}   # ifindex -> name of the masters seen (never reused before 2**31)

    def opener(self) -> LinkWatcher:
        return LinkWatcher()

    def match(self, event) -> bool:
        return port_event(event)

    def heard(self, event) -> None:
        self.names.add(event)

    def check(self) -> None:
        """Check the veths heard of since the last check (every recorded one after a resync)."""
        last = self.names.take()
        self.checks += 1
        try:
            suspects = None if last is None else {n for n, e in last.items() if not self._on_own_bridge(e)}
            if suspects is None or suspects:
                self._repair(suspects)
        except Exception:
            self.names.add(RESYNC)   # the next check looks at every veth: these went unchecked
            raise

    def _on_own_bridge(self, event) -> bool:
        """The veth's last announcement has it a port of a bridge whose port group is its
        own (secnet put it in that group when it made it). Takes no lock and, but for a
        bridge not seen before, asks the kernel nothing: a later change is announced
        later, and checked then."""
        if not event.master:
            return False
        name = self._bridges.get(event.master)
        if name is None:
            name = self.driver.links.link_name(event.master)
            if name is None:
                return False
            self._bridges[event.master] = name
        return nl.port_group(name) == event.group

    def _repair(self, names: Optional[set]) -> None:
        """Under the driver's lock: every recorded endpoint whose veth is in ``names``
        (all when None) and off its network's bridge gets its veth ensured again."""
        driver = self.driver
        with driver.lock:
            for net in driver.state.networks():
                eps = [ep for ep in driver.state.endpoints(net.id) if names is None or ep.veth_host in names]
                off = [ep for ep in eps if self._off_bridge(net, ep)]
                if off:
                    self._put_back(net, off)

    def _off_bridge(self, net, ep) -> bool:
        port = self.driver.links.port_of(ep.veth_host)
        if port is None:
            if ep.joined:
                log.warning("endpoint %s: its veth %s is gone (deleted by someone else); its container "
                            "has no interface on network %s", ep.id[:12], ep.veth_host, net.id[:12])
            return False
        return port[0] != net.bridge

    def _put_back(self, net, off: list) -> None:
        driver = self.driver
        if not driver.links.link_exists(net.bridge):
            log.warning("network %s: its bridge %s is gone; making it again", net.id[:12], net.bridge)
            driver.restore_network(net, driver.state.endpoints(net.id))
        for ep in off:
            log.warning("endpoint %s: its veth %s was taken off bridge %s behind secnet's back; putting "
                        "it back", ep.id[:12], ep.veth_host, net.bridge)
            try:
                driver.links.ensure_veth(ep.veth_host, ep.veth_peer, net.bridge, ep.id, net.mtu, ep.mac,
                                         ep.addresses)
                self.put_back += 1
            except Exception as exc:   # the container stays cut off: fail closed
                log.error("endpoint %s: cannot put veth %s back on bridge %s: %s", ep.id[:12],
                          ep.veth_host, net.bridge, exc)
        driver.reconciler.repair_network(net.id)
