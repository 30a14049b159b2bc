"""The driver after a daemon restart: rebuild each network's and endpoint's
kernel objects from the state, and remove the kernel objects no record owns
(orphans of a crash between a kernel change and its state row).

Links only: the reconciler's first pass writes every network's policy.
"""
from __future__ import annotations

import logging

from plugin.driver.portmap import Binding

log = logging.getLogger("plugin.driver.driver")


def restore(driver) -> dict:
    """Rebuild ``driver``'s (a :class:`plugin.driver.driver.Driver`) networks and
    endpoints from its state, under its lock; a network or endpoint that fails is
    logged and skipped, never fatal. Returns ``{"networks": n, "endpoints": n,
    "removed": n}`` (``removed``: orphan links and nft tables/BPF objects)."""
    counts = {"networks": 0, "endpoints": 0, "removed": 0}
    with driver.lock:
        owners = set()
        for net in driver.state.networks():
            eps = driver.state.endpoints(net.id)
            owners.add(net.id)
            try:
                driver.restore_network(net, eps)
                driver.links.prune_neighbours(net.bridge, [(ep.mac, ep.addresses) for ep in eps])
                counts["networks"] += 1
            except Exception:
                log.exception("restore of network %s failed", net.id[:12])
            for ep in eps:
                owners.add(ep.id)
                _restore_endpoint(driver, net, ep)
                counts["endpoints"] += 1
        try:
            counts["removed"] = remove_orphans(driver, owners)
        except Exception:
            log.exception("removing orphans failed")
    log.info("restored %(networks)d networks, %(endpoints)d endpoints; removed %(removed)d orphans", counts)
    return counts


def _restore_endpoint(driver, net, ep) -> None:
    try:
        driver.links.ensure_veth(ep.veth_host, ep.veth_peer, net.bridge, ep.id, net.mtu, ep.mac, ep.addresses)
    except Exception:
        log.exception("restore of endpoint %s failed", ep.id[:12])
    if ep.ports:
        try:
            driver.ports.reserve(ep.id, [Binding(p, ip, hp, hp, cp) for p, ip, hp, cp in ep.ports])
        except Exception as exc:
            log.error("endpoint %s: cannot hold its published ports again: %s", ep.id[:12], exc)


def remove_orphans(driver, owners: set) -> int:
    """Remove every link and firewall object secnet made whose owner (a network
    or endpoint id) is not in ``owners``. Returns how many were removed."""
    removed = 0
    for name, _kind, owner in driver.links.owned_links():
        if owner not in owners and driver.links.remove_link(name, owner=owner):
            log.info("removed orphan interface %s", name)
            removed += 1
    for _binary, bridge, owner in driver.firewall.owned():
        if owner not in owners:
            driver.firewall.remove(bridge, owner)
            removed += 1
    return removed
