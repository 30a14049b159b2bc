"""NftBackend: the nftables datapath behind the enforcement seam (``plugin.enforce.backend``).

Reads of the kernel (drift, counters, reference shapes) are in ``readback``.

It keeps, per network, what it last wrote (the realized state: the policy
map, the ports, and every set's elements with the rules behind them), so
that each later change is computed as an element delta against it and
written as one transaction (``ruleset.delta_script``). Only
:meth:`NftBackend.apply_network` writes rules. When a delta fails (the
kernel's tables were changed behind its back), the backend rebuilds the
network from the desired state instead: one transaction as well, and the
repair is logged.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from plugin.enforce.backend import BackendError, DropEvent, NetworkSpec
from segmentation.policymap import PolicyDelta, PolicyMap

from . import fqdn, ruleset
from .drops import NFLOG_GROUP, deliver
from .elements import (COUNTED_IN, PORT_SETS, ElementDelta, PolicyElements, diff, port_elements,
                       ports_elements, setting_elements)
from .netlink import ElementWriter, encoder
from .nflog import NflogReader
from .nftdump import table_exists
from .brhooks import MADE_ON, BridgeHooks, available as brnf_available
from .portlinks import PortGroups
from .readback import ReadbackMethods
from .runner import TABLE_PREFIX, NftError, NftRunner

log = logging.getLogger(__name__)
FEW_HITS = 8   # a delta of up to this many elements of a counted set looks their hits up one by one


@dataclass
class _Realized:
    """What the backend last wrote for one network."""

    spec: NetworkSpec
    policy: PolicyMap
    policy_elements: PolicyElements
    ports: dict                                   # endpoint id -> Port
    settings: dict                                # setting set -> {element: None}
    port_sets: dict = field(default_factory=dict)  # set -> {element: value}, all ports


class NftBackend(fqdn.FqdnMethods, ReadbackMethods):
    """The nftables datapath (see ``ruleset`` for the tables it writes).

    ``runner``: an :class:`NftRunner` (default: libnftables in-process in
    the calling thread's network namespace). Element deltas go over
    netlink (``netlink.ElementWriter``) unless ``netlink=False`` (then as
    nft scripts). Thread-safe: calls are serialized by one lock.
    """

    name = "nftables"
    bridge_options = MADE_ON   # a bridge made by the link writer has its switches on

    def __init__(self, runner: Optional[NftRunner] = None, nflog_group: int = NFLOG_GROUP,
                 netlink: bool = True):
        self.runner = runner or NftRunner()
        self.writer = ElementWriter() if netlink else None
        self.nflog_group = nflog_group
        self._nets: dict = {}
        self._lock = threading.RLock()
        self._reader: Optional[NflogReader] = None
        self._references: dict = {}    # network id -> (NetworkSpec, shapes)
        self.repairs = 0
        self._host_ok = False
        self.fqdn = fqdn.NftFqdnSets(self.runner, ruleset.table_name)
        self.groups = PortGroups()   # the ports' interface group, before they are in veths
        self.hooks = BridgeHooks()   # the bridge's own br_netfilter switches (brhooks)

    # --- writes -----------------------------------------------------------------------------
    def check_host(self) -> None:
        """Raise BackendError when nft cannot be run here. Once it could, it is not asked
        again (as the eBPF backend): ``list tables`` fills libnftables' cache with the
        host's whole ruleset, ~30 ms of every ``docker network create`` on a busy host."""
        if self._host_ok:
            return
        missing = brnf_available()
        if missing is not None:
            raise BackendError(missing)
        try:
            self.runner.list_json("tables")
        except (NftError, OSError) as exc:
            raise BackendError(f"nftables unavailable: {exc}") from None
        self._host_ok = True

    def apply_network(self, net: NetworkSpec, policy: PolicyMap, ports: Iterable, bridge_made: bool = False) -> None:
        """Replace both tables of ``net`` (rules and elements) in one transaction, after the
        bridge's br_netfilter switches (``brhooks``; not read when ``bridge_made`` with them).
        Raises BackendError when nft refuses the script (the old tables stay). The addresses
        learned from DNS answers stay, each with the time it has left. The first call for a
        network in this process (a restart) adopts intact tables instead (``_adopt``): their
        counters go on, as the eBPF backend's maps do.
        """
        with self._lock:
            ports = {p.endpoint_id: p for p in ports}
            if not bridge_made:
                self.hooks.ensure(net.bridge)
            self.groups.ensure(net.bridge, ((p.name,) for p in ports.values()))   # adopted too
            if net.id not in self._nets and self._adopt(net, policy, ports):
                return
            real = _realize(net, policy, ports)
            every = {**real.policy_elements.flat(), **real.settings, **real.port_sets}
            if self._create(net, every):
                keep = ""
            else:
                keep = self._kept_learned(net.id)
                self._apply(ruleset.network_script(net.id, net, every, keep))
            self.fqdn.written(net.id, learned=bool(keep))   # none kept: its maps are empty
            self._nets[net.id] = real

    def _create(self, net: NetworkSpec, elements: dict) -> bool:
        """Write ``net``'s tables with ``ruleset.create_script`` when neither exists (a create,
        or a restore after a reboot): one transaction that libnftables evaluates without
        reading the host's other tables. True if written; False when either table exists
        (one ``NFT_MSG_GETTABLE`` each: ``nftdump.table_exists``), also when one appeared
        between that check and the write (the kernel refused the whole transaction,
        ``EEXIST``, and wrote nothing): the caller then replaces the tables. Raises
        BackendError when nft refuses the script and neither table is there."""
        if self._tables_exist(net.id):
            return False
        try:
            self.runner.apply(ruleset.create_script(net.id, net, elements))
        except NftError as exc:
            if self._tables_exist(net.id):
                log.info("network %s: its tables appeared as they were written (%s); replacing them",
                         net.id[:12], str(exc).splitlines()[0][:200])
                return False
            raise BackendError(str(exc)) from None
        return True

    @staticmethod
    def _tables_exist(network_id: str) -> bool:
        """Whether either table of the network is in the kernel (the calling thread's
        namespace). True when that cannot be read (EPERM): the replace path asks nft."""
        table = ruleset.table_name(network_id)
        try:
            return any(table_exists(family, table) for family in ("inet", "bridge"))
        except OSError:
            return True

    def _adopt(self, net: NetworkSpec, policy: PolicyMap, ports: dict) -> bool:
        """Take over ``net``'s tables as they are if no rule or element drifted; True if so."""
        problems = self.drift(net, policy, ports.values())
        if self._references.get(net.id, (None,))[0] != net:   # compared with themselves: an older build's pass
            problems.append("no fresh reference to check its rules against")
        if problems:
            log.info("network %s: writing its tables (%s)", net.id[:12], problems[0])
            return False
        self._nets[net.id] = _realize(net, policy, ports)
        log.info("network %s: adopted its intact tables (counters kept)", net.id[:12])
        return True

    def _kept_learned(self, network_id: str) -> str:
        """The learned DNS addresses of the tables about to be replaced, as nft lines."""
        try:
            grants = self.fqdn.learned(network_id)
        except (NftError, OSError):   # no table yet (a create), or sets missing
            return ""
        return fqdn.keep_script(ruleset.table_name(network_id), grants, time.time())

    def apply_ports(self, net: NetworkSpec, changes: Iterable[tuple], grouped: bool = False) -> None:
        """Endpoint changes ``(old Port or None, new Port or None)`` as one element delta.

        The old state is the one realized here (by endpoint id), so applying
        the same change twice is harmless. Costs what the changed ports
        own, whatever the size of the network. ``grouped``: the caller's link writer
        puts the new ports in the network's interface group (``plugin.kernel.links``
        makes a pair in it, and a claimed one is moved into it) before the caller
        answers: no group request of ours (CreateEndpoint: it would wait on the RTNL
        lock behind the pair being made beside it, for nothing).
        """
        with self._lock:
            real = self._realized(net)
            ports, delta = self._port_delta(real, changes)
            self._write(net, real, delta, lambda: self._set_ports(real, ports, delta), grouped)

    def apply_policy(self, net: NetworkSpec, delta: PolicyDelta, changes: Iterable[tuple] = (),
                     policy: Optional[PolicyMap] = None, grouped: bool = False) -> None:
        """A policy-map delta, ``net.mode`` and (optionally) endpoint ``changes`` as one
        element delta: e.g. a join that brings a new segment is one transaction.
        ``policy``: the map after ``delta`` if the caller has it (saves a copy);
        ``grouped``: as :meth:`apply_ports`' (a new segment's CreateEndpoint makes the
        veth in the group right after this: no group request of ours, which would only
        find no device and cost a netlink lookup)."""
        with self._lock:
            real = self._realized(net)
            policy = real.policy.apply(delta) if policy is None else policy
            ports, changed = self._port_delta(real, changes)
            if _rules_of(net) != _rules_of(real.spec):   # bridge, subnets: the rules change
                self.apply_network(net, policy, ports.values())
                return
            # in place: if the kernel refuses the delta, the network is rebuilt from it anyway
            elements = real.policy_elements.change(   # DNS rules: counted by tag (fqdn)
                _union(delta.entries_added, delta.cidrs_added),
                _union(delta.entries_removed, delta.cidrs_removed))
            settings = setting_elements(policy, net.mode, real.policy_elements)
            diff(real.settings, settings, changed)
            changed.delete.update(elements.delete)
            changed.add.update(elements.add)
            changed.flush.update(elements.flush)
            changed.kept.update(elements.kept)
            self._forget_hits(net, real, changed)

            def done():
                self._set_ports(real, ports, changed)
                real.policy, real.settings, real.spec = policy, settings, net
            self._write(net, real, changed, done, grouped)

    def _forget_hits(self, net: NetworkSpec, real: _Realized, delta: ElementDelta) -> None:
        """Add to ``delta`` the deletion of every hit (``elements.COUNTED_IN``) whose element is
        not in its policy set after ``delta``, or is added by it: a rule removed and later added
        again counts from zero, as an element of its own counter would, and a removed rule's
        counts do not hold a hit set's room. Only when ``delta`` changes such a set; its hits
        are read first (one dump: the rules that saw traffic). A hit made between that read and
        the commit by a rule this delta removes is deleted by the next such delta (it is never
        reported: counters read only the elements in force). A delta of up to :data:`FEW_HITS`
        elements of the set asks for their hits alone (one lookup each, not a dump of every
        rule that saw traffic: a one-rule edit's cost stays that of one rule)."""
        table = ruleset.table_name(net.id)
        for name, hits_name in COUNTED_IN.items():
            gone, born = delta.delete.get(name), delta.add.get(name)
            if not gone and not born:
                continue
            try:
                if self.writer is not None and len(gone or ()) + len(born or ()) <= FEW_HITS:
                    # a few rules (an add, a remove): their hits alone, whatever the set holds
                    stale = self.writer.held(table, hits_name, [*(gone or ()), *(born or ())],
                                             encoder(hits_name, key_only=True))
                else:
                    held = real.policy_elements.groups.get(name, {})
                    stale = [h for h in self._hits(table, hits_name) if h not in held or (born and h in born)]
            except (NftError, OSError):   # a table of an older FORMAT (no hit set): its elements count
                continue
            if stale:
                delta.delete[hits_name].update(dict.fromkeys(stale))

    @staticmethod
    def _port_delta(real: _Realized, changes: Iterable[tuple]) -> tuple:
        """(ports after ``changes``, ElementDelta of the ports' sets)."""
        ports, before, after = dict(real.ports), {}, {}
        for old, new in changes:
            endpoint = (new or old).endpoint_id
            gone = ports.pop(endpoint, None)
            if gone is not None:
                _merge(before, port_elements(gone))
            if new is not None:
                ports[endpoint] = new
                _merge(after, port_elements(new))
        return ports, diff(before, after)

    def remove_network(self, network_id: str) -> None:
        with self._lock:
            self._apply(ruleset.delete_script(network_id))
            self._nets.pop(network_id, None)
            self._references.pop(network_id, None)
            self.fqdn.forget(network_id)

    # --- reads ------------------------------------------------------------------------------
    def networks(self) -> set:
        """Ids of the networks realized here, and 12-character prefixes of other secnet tables."""
        with self._lock:
            known = {nid[:12]: nid for nid in self._nets}
        return {known.get(name[len(TABLE_PREFIX):], name[len(TABLE_PREFIX):])
                for _family, name in self.runner.tables()}

    def quiet_batches(self, watcher) -> None:
        """Pause ``watcher`` (:class:`~plugin.kernel.nftwatch.NftWatcher`) around this
        backend's large element deltas (:meth:`netlink.ElementWriter.apply`)."""
        if self.writer is not None:
            self.writer.quiet = watcher

    def own_ports(self) -> tuple:
        """Netlink port ids of this backend's own deltas (its element writer's socket, opened here)."""
        return (self.writer.open(),) if self.writer is not None else ()

    def owns(self, event) -> Optional[str]:
        """The network an nft change notification (``plugin.kernel.nftevents.NftEvent``) touched, or None.

        Returns the network id when it is realized here, else the table's
        12-character prefix; None for other tables and for resync events.
        """
        table = getattr(event, "table", "")
        if not table.startswith(TABLE_PREFIX) or getattr(event, "family", "") not in ("inet", "bridge"):
            return None
        if self.writer is not None and getattr(event, "portid", 0) == self.writer.portid != 0:
            return None   # our own delta (a join, a leave, an edit)
        if getattr(event, "object", "") == "element" and getattr(event, "name", "").startswith("fqdn"):
            return None   # a learned DNS address (plugin.dns), not policy
        prefix = table[len(TABLE_PREFIX):]
        with self._lock:
            return next((nid for nid in self._nets if nid.startswith(prefix)), prefix)

    def watch_drops(self, callback: Callable[[DropEvent], None]) -> None:
        """Deliver every logged drop as a DropEvent, from a reader thread (NFLOG)."""
        with self._lock:
            if self._reader is not None:
                return
            self._reader = NflogReader(self.nflog_group, lambda p, t: deliver(p, t, callback))
            self._reader.start()

    def close(self) -> None:
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()
        for part in (self.writer, self.groups, self.hooks, self.runner):   # runner: its kept context
            if part is not None:
                part.close()

    # --- internals --------------------------------------------------------------------------
    def _realized(self, net: NetworkSpec) -> _Realized:
        real = self._nets.get(net.id)
        if real is None:
            raise BackendError(f"network {net.id[:12]} has no nftables state: apply_network first")
        return real

    def _apply(self, script: str) -> None:
        try:
            self.runner.apply(script)
        except NftError as exc:
            raise BackendError(str(exc)) from None

    def _write(self, net: NetworkSpec, real: _Realized, delta: ElementDelta, done,
               grouped: bool = False) -> None:
        """Write ``delta``; if the kernel refuses it, rebuild the network instead.
        The new ports' interface group first, unless ``grouped`` (:meth:`apply_ports`)."""
        if delta.empty:
            done()
            return
        try:
            if not grouped:
                self.groups.ensure(net.bridge, delta.add.get("veths", {}))
            if self.writer is not None:
                self.writer.apply(ruleset.table_name(net.id), delta)
            else:
                self.runner.apply(ruleset.delta_script(net.id, delta))
        except (NftError, OSError) as exc:
            done()
            log.warning("network %s: element delta refused (%s); rebuilding its tables",
                        net.id[:12], str(exc).splitlines()[0][:200])
            self.repairs += 1
            self.apply_network(net, real.policy, real.ports.values())
            return
        done()

    @staticmethod
    def _set_ports(real: _Realized, ports: dict, delta: ElementDelta) -> None:
        """Record ``ports`` and the port-set part of ``delta`` as realized."""
        real.ports = ports
        for name, els in delta.delete.items():
            if name in PORT_SETS:
                for element in els:
                    real.port_sets.get(name, {}).pop(element, None)
        for name, els in delta.add.items():
            if name in PORT_SETS:
                real.port_sets.setdefault(name, {}).update(els)



def _realize(net: NetworkSpec, policy: PolicyMap, ports: dict) -> _Realized:
    """What a whole write of ``net`` leaves in the kernel (``ports``: endpoint id -> Port)."""
    elements = PolicyElements.of(policy.entries | policy.cidrs)
    real = _Realized(net, policy, elements, ports, setting_elements(policy, net.mode, elements))
    real.port_sets = ports_elements(ports.values())
    return real


def _rules_of(net: NetworkSpec) -> tuple:
    """What of a NetworkSpec the rules depend on (the mode is an element)."""
    return net.id, net.bridge, tuple(net.subnets), net.internal


def _merge(into: dict, elements: dict) -> None:
    for name, els in elements.items():
        into.setdefault(name, {}).update(els)


def _union(entries: frozenset, cidrs: frozenset) -> frozenset:
    """``entries | cidrs``; ``entries`` itself when there are no CIDR entries (a policy set
    of 10,000 east-west rules: no copy of 10,000 entries, ~0.2 ms each way)."""
    return entries | cidrs if cidrs else entries
