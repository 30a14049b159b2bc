"""Idempotent ensure/remove of bridges and veth pairs, with pyroute2.

Every object secnet makes carries an interface alias ``secnet:<owner-id>``,
so the reconciler can tell its own bridges and veths from anybody else's
whatever their names (``secnet.bridge`` lets users choose a bridge name).
Calls are idempotent: an ``ensure_*`` on an object that already exists
repairs it, a ``remove_*`` of a missing object succeeds.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import ipaddress
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Optional

from pyroute2.netlink.exceptions import NetlinkError

from plugin.kernel import neighbours
from plugin.kernel.lightimport import import_iproute
from plugin.kernel.linkgroups import LinkGroups

IPRoute = import_iproute().IPRoute   # pyroute2's, without ssl and unittest.mock

ALIAS_PREFIX = "secnet:"
BRIDGE_PREFIX = "sn-"
VETH_HOST_PREFIX = "snv"
VETH_PEER_PREFIX = "snp"
_IFF_UP = 0x1   # ifinfomsg's flag (with kind=bridge_slave pyroute2's "state" is the port's STP state)


class LinkConflict(Exception):
    """A link with the wanted name exists and does not belong to this owner."""


class BridgeFull(Exception):
    """The bridge has no free port: a Linux bridge takes at most 1,023 (``BR_MAX_PORTS``
    is 1,024 and port 0 is never given: net/bridge/br_private.h, br_if.c), so a
    network holds at most 1,023 endpoints, as with Docker's bridge driver."""


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:12]


def veth_names(endpoint_id: str) -> tuple:
    return VETH_HOST_PREFIX + endpoint_id[:11], VETH_PEER_PREFIX + endpoint_id[:11]


def _derived_names(owner: str) -> tuple:
    return (bridge_name(owner),) + veth_names(owner)


def port_group(bridge: str) -> int:
    """The interface group (``IFLA_GROUP``, ``ip link set DEV group N``) of every port of
    ``bridge``: 0x5ec00000 plus 20 bits of a digest of the bridge's name (below 2**31, which
    iproute2 prints and parses). The nftables datapath lets frames of devices outside its
    network's group skip its bridge table on one compare (``ruleset.render_bridge``); a group
    two bridges share only costs them that shortcut, never a check."""
    return 0x5EC00000 | int.from_bytes(hashlib.sha256(bridge.encode()).digest()[:4], "big") & 0xFFFFF


def derived_mac(seed: str) -> str:
    """A stable, locally administered unicast MAC derived from an id."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def endpoint_mac(ipv4: Optional[str], endpoint_id: str) -> str:
    """Docker's convention (02:42 + IPv4 address) when there is one."""
    if ipv4:
        packed = ipaddress.ip_interface(ipv4).ip.packed
        return "02:42:" + ":".join(f"{b:02x}" for b in packed)
    return derived_mac(endpoint_id)


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:  # no IPv6 in this kernel / namespace: nothing to do
        pass


def _on_netlink_thread(method):
    """``method`` run on the object's one netlink thread, its result or exception
    returned to the caller (directly when already on that thread)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if threading.get_ident() == self._thread_id:
            try:
                return method(self, *args, **kwargs)
            finally:
                self._drop_unclaimed()
        pool = self._pool
        if pool is None:
            raise OSError(errno.EBADF, "the netlink socket is closed")
        return pool.submit(call, self, *args, **kwargs).result()
    return call


class Netlink:
    """Thin wrapper of one rtnetlink socket, every call made on one thread.

    pyroute2 0.9 gives each thread that calls an ``IPRoute`` a netlink socket,
    an asyncio event loop and a message queue of its own, kept until the
    ``IPRoute`` is closed (~67 KiB each). The daemon calls from its request,
    reconcile and watcher threads, so every call runs on the one thread
    ``secnet-netlink``, which also serializes them. The constructor starts it,
    so it works in the constructing thread's network namespace.
    """

    def __init__(self):
        self._thread_id: Optional[int] = None
        # bridge name -> ifindex as last seen: the kernel hands indexes out cyclically
        # (no reuse before 2^31), so a stale one names no device and is looked up again
        self._bridges: dict = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="secnet-netlink")
        self._ipr = self._pool.submit(self._open).result()

    def _open(self) -> IPRoute:
        self._thread_id = threading.get_ident()
        return IPRoute()

    def _drop_unclaimed(self) -> None:
        """Drop the messages no request of ours claimed.

        pyroute2 0.9 puts every datagram whose sequence number no request
        waits for into the socket's root queue, which only ``IPRoute.get()``
        would read: above all the kernel's ACK that follows the answer to each
        request (the request is done at the answer; the socket joins no event
        group). The daemon never reads them, so the queue grew by one message
        per call (1,000 endpoints: ~11 MiB, each message a page of its own).
        Runs on the netlink thread, whose queue it is.
        """
        queue = getattr(getattr(getattr(self._ipr, "asyncore", None), "local", None), "msg_queue", None)
        root = getattr(queue, "root", None)
        while root is not None and not root.empty():
            root.get_nowait()
            root.task_done()

    def close(self) -> None:
        """Close the socket and end the thread (idempotent)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        on_thread = threading.get_ident() == self._thread_id
        try:
            if on_thread:
                self._ipr.close()
            else:
                pool.submit(self._ipr.close).result()
        finally:
            pool.shutdown(wait=not on_thread)

    def _index(self, name: str) -> Optional[int]:
        found = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def _alias(self, index: int) -> Optional[str]:
        links = self._ipr.get_links(index)
        return links[0].get("ifalias") if links else None

    def _kind(self, index: int) -> Optional[str]:
        links = self._ipr.get_links(index)
        return links[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") if links else None

    def _claim(self, name: str, owner: str, kind: str) -> Optional[int]:
        """Index of an existing link we own, None if absent; LinkConflict otherwise."""
        index = self._index(name)
        if index is None:
            return None
        alias = self._alias(index)
        if self._kind(index) == kind and not alias and name in _derived_names(owner):
            # made by us, but a crash came before its alias was set: adopt it
            self._ipr.link("set", index=index, ifalias=ALIAS_PREFIX + owner)
            return index
        if alias != ALIAS_PREFIX + owner or self._kind(index) != kind:
            raise LinkConflict(f"interface {name} already exists and is not this network's")
        return index

    @_on_netlink_thread
    def ensure_bridge(self, name: str, owner: str, mtu: int, addresses: Iterable[str],
                      options: Iterable[tuple] = ()) -> bool:
        """Bridge ``name`` exists, up, with ``mtu``, a stable MAC and the gateway addresses.
        True when it was made now, with ``options`` (``(attribute, value)`` pairs of the
        bridge, pyroute2's names of ``IFLA_BR_*``: the backend's ``bridge_options``).

        A new bridge takes three requests and one per address (it has none yet): ``link
        add`` with its MTU, MAC and ``options`` (exclusive: NLM_F_EXCL, so it changes no
        link that has the name), its index, then owner and up in one ``link set``; when
        the name is taken (EEXIST) the link is claimed (or refused) and repaired
        (``options`` are the backend's to check there: they may have drifted).
        """
        try:
            self._ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=derived_mac(owner), **dict(options))
            made = True
        except NetlinkError as exc:
            if exc.code != errno.EEXIST or (index := self._claim(name, owner, "bridge")) is None:
                raise   # EEXIST and gone again: the add's own error (Docker retries)
            made = False
        if made:
            index = self._index(name)
            self._ipr.link("set", index=index, ifalias=ALIAS_PREFIX + owner, flags=_IFF_UP, change=_IFF_UP)
            for cidr in addresses:
                self._add_addr(index, ipaddress.ip_interface(cidr))
        else:
            self._repair_bridge(index, owner, mtu, addresses)
        self._bridges[name] = index
        # 127.0.0.1:PORT of a published port is DNAT'd out of this bridge
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
        return made

    def _repair_bridge(self, index: int, owner: str, mtu: int, addresses: Iterable[str]) -> None:
        self._ipr.link("set", index=index, mtu=mtu, address=derived_mac(owner))
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in self._ipr.get_addr(index=index)}
        for cidr in addresses:
            iface = ipaddress.ip_interface(cidr)
            if (str(iface.ip), iface.network.prefixlen) not in have:
                self._add_addr(index, iface)
        self._ipr.link("set", index=index, state="up")

    def _add_addr(self, index: int, iface) -> None:
        kwargs = {}
        if iface.version == 6:
            kwargs["flags"] = 0x02  # IFA_F_NODAD: the gateway must answer at once
        try:
            self._ipr.addr("add", index=index, address=str(iface.ip),
                           prefixlen=iface.network.prefixlen, **kwargs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def ensure_ipv6_forwarding(self) -> bool:
        """The host forwards IPv6, as Docker's bridge driver sets it up for an
        IPv6 network: without it no IPv6 flow leaves the network and containers
        in two IPv6 subnets of one network cannot reach each other (the host
        routes between them). True when it had to be switched on."""
        changed = False
        for scope in ("all", "default"):
            path = f"/proc/sys/net/ipv6/conf/{scope}/forwarding"
            try:
                with open(path) as f:
                    if f.read().strip() == "1":
                        continue
            except FileNotFoundError:  # no IPv6 in this kernel / namespace
                return False
            _write_sysctl(path, "1")
            changed = True
        return changed

    @_on_netlink_thread
    def ensure_veth(self, host: str, peer: str, bridge: str, owner: str, mtu: int, mac: str,
                    addresses: Iterable = ()) -> None:
        """Veth pair: ``host`` enslaved to ``bridge`` and up; ``peer`` down with ``mac``;
        a permanent entry on the bridge for each of ``addresses`` (the endpoint's, CIDR
        form) with ``mac`` (:mod:`plugin.kernel.neighbours`).

        The peer may already have been moved into a container's namespace by
        Docker (after Join); then only the host side is repaired. A new pair
        takes three requests: the bridge's index, the pair (MTU, peer MAC, the
        host side on the bridge), and the host side's owner, hairpin and up by
        name (two when the bridge's index is remembered); an existing one is
        claimed (or refused) and repaired.
        """
        try:
            self._add_veth(host, peer, bridge, mtu, mac)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST or self._claim(host, owner, "veth") is None:
                raise   # not there but the peer's name is taken: the add's own error
            self._ipr.link("set", ifname=host, master=self._bridge_index(bridge, fresh=True), mtu=mtu,
                           group=port_group(bridge))
        # The host side is a bridge port, not a host interface: without IPv6
        # on it, it sends no DAD/MLD/RS of its own straight to the container
        # (frames that would bypass the bridge hooks: "nothing in" for
        # pending and quarantined containers holds). Before it goes up.
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{host}/disable_ipv6", "1")
        # its owner; hairpin: a container may reach its own published port via the host
        self._ipr.link("set", ifname=host, ifalias=ALIAS_PREFIX + owner, flags=_IFF_UP, change=_IFF_UP,
                       kind="bridge_slave", mode=1)
        neighbours.ensure(self._ipr, self._bridge_index(bridge), neighbours.entries(mac, addresses))

    def _bridge_index(self, bridge: str, fresh: bool = False) -> int:
        index = None if fresh else self._bridges.get(bridge)
        if index is None:
            index = self._index(bridge)
            if index is None:
                raise LinkConflict(f"bridge {bridge} is missing")
            self._bridges[bridge] = index
        return index

    def _add_veth(self, host: str, peer: str, bridge: str, mtu: int, mac: str) -> None:
        """The pair, its MTU, the peer's MAC, the host side on ``bridge`` and in its
        :func:`port_group`: one request (two when the bridge's remembered index names no
        device: EINVAL).

        Both sides are made with one TX and one RX queue (``IFLA_NUM_TX_QUEUES``,
        ``IFLA_NUM_RX_QUEUES``), the number a veth uses anyway. Without them the kernel
        allocates one per possible CPU and then cuts the real number down to one
        (drivers/net/veth.c ``veth_init_queues``); cutting it is ``synchronize_net()``
        under the RTNL lock (net/core/dev.c ``netif_set_real_num_tx_queues``), an
        expedited RCU grace period per side: ~2 sleeps and ~3 ms of each CreateEndpoint
        (perf sched_switch stacks, bench/results/2026-12-01-runfast2.md).
        """
        queues = {"num_tx_queues": 1, "num_rx_queues": 1}
        for fresh in (False, True):
            try:
                self._ipr.link("add", ifname=host, kind="veth", mtu=mtu, master=self._bridge_index(bridge, fresh),
                               group=port_group(bridge), **queues,
                               peer={"ifname": peer, "address": mac, "mtu": mtu, **queues})
                return
            except NetlinkError as exc:
                if exc.code == errno.EXFULL:   # the kernel removed the pair again
                    raise BridgeFull(f"bridge {bridge} is full: a Linux bridge takes at most 1,023 "
                                     "ports, so a network holds at most 1,023 endpoints") from None
                if exc.code != errno.EINVAL or fresh:
                    raise
                self._bridges.pop(bridge, None)

    def start_veth(self, host: str, peer: str, bridge: str, owner: str, mtu: int, mac: str,
                   addresses: Iterable = ()) -> Future:
        """:meth:`ensure_veth` begun on the netlink thread; the caller goes on meanwhile
        and takes its end (None, or its exception) from the returned future."""
        pool = self._pool
        if pool is None:
            raise OSError(errno.EBADF, "the netlink socket is closed")
        return pool.submit(self.ensure_veth, host, peer, bridge, owner, mtu, mac, tuple(addresses))

    @_on_netlink_thread
    def remove_neighbours(self, bridge: str, mac: str, addresses: Iterable) -> int:
        """Drop the bridge's permanent entries of an endpoint (``addresses`` with ``mac``)
        that still point at ``mac``. Returns how many went; 0 without the bridge."""
        index = self._index(bridge)
        if index is None:
            return 0
        return neighbours.remove(self._ipr, index, neighbours.entries(mac, addresses))

    @_on_netlink_thread
    def prune_neighbours(self, bridge: str, endpoints: Iterable) -> int:
        """Drop the bridge's permanent entries that no ``(mac, addresses)`` of ``endpoints``
        names (endpoints gone while the daemon was down). Returns how many went."""
        index = self._index(bridge)
        if index is None:
            return 0
        wanted: dict = {}
        for mac, addresses in endpoints:
            wanted.update(neighbours.entries(mac, addresses))
        return neighbours.prune(self._ipr, index, wanted)

    @_on_netlink_thread
    def remove_link(self, name: str, owner: Optional[str] = None) -> bool:
        """Delete link ``name`` (only if owned by ``owner`` when given). True if removed."""
        index = self._index(name)
        if index is None:
            return False
        alias = self._alias(index) or ""
        unnamed_ours = not alias and (owner == "" or name in _derived_names(owner or ""))
        if owner is not None and alias != ALIAS_PREFIX + owner and not unnamed_ours:
            return False
        self._bridges.pop(name, None)
        try:
            self._ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
        return True

    @_on_netlink_thread
    def link_exists(self, name: str) -> bool:
        return self._index(name) is not None

    @_on_netlink_thread
    def link_name(self, index: int) -> Optional[str]:
        """The name of the link with ifindex ``index``; None when there is none."""
        try:
            found = self._ipr.get_links(index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return (found[0].get_attr("IFLA_IFNAME") or None) if found else None

    @_on_netlink_thread
    def port_of(self, name: str) -> Optional[tuple]:
        """``(bridge, group)`` of link ``name``: the name of the device it is a port of
        (``IFLA_MASTER``; "" when none) and its interface group (``IFLA_GROUP``); None
        when no link is called ``name``."""
        try:
            found = self._ipr.get_links(ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        if not found:
            return None
        master, group = found[0].get_attr("IFLA_MASTER") or 0, found[0].get_attr("IFLA_GROUP") or 0
        if not master:
            return "", group
        try:
            bridge = self._ipr.get_links(master)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
            bridge = None   # the master went between the two requests
        return (bridge[0].get_attr("IFLA_IFNAME") or "" if bridge else ""), group

    @_on_netlink_thread
    def owned_links(self) -> list:
        """(name, kind, owner-id) of every link carrying a secnet alias, and of
        alias-less veths named like secnet's (a crash between creating a link
        and naming its owner leaves those; their owner is ""). The links are read raw
        (plugin.kernel.linkgroups: pyroute2's ``get_links`` made ~25 KiB of objects of
        each: +58 MiB of VmRSS, kept, for 2,002 links)."""
        out = []
        reader = LinkGroups()   # its socket opened here, on the netlink thread
        try:
            links = reader.links()
        finally:
            reader.close()
        for name, _group, alias, kind in links:
            alias = alias or ""
            if alias.startswith(ALIAS_PREFIX):
                out.append((name, kind, alias[len(ALIAS_PREFIX):]))
            elif not alias and kind == "veth" and name.startswith(VETH_HOST_PREFIX):
                out.append((name, kind, ""))
        return out
