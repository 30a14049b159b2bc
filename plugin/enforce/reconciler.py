"""The one writer of kernel policy: desired state from records, applied through a backend.

The driver tells the reconciler what changed (a network, an endpoint, a
policy, a mode); the reconciler works out the network's desired
:class:`~segmentation.policymap.PolicyMap` (identities from the state's
allocator) and :class:`~plugin.enforce.backend.Port` per endpoint, and hands
the *difference* to the network's backend (``secnet.backend``): a join is a
port delta, a policy edit or a new segment is a policy-map delta. Only a
create, a restore, or a repair of drift writes a whole network.

A join that brings a new segment is the policy delta (entries of an identity that no
address has yet) and the port in one step of the backend; it takes over an idle segment's
identity (members gone, no rule naming it) when it can: its entries are in force already
(:func:`plugin.enforce.identities.idle_kept`); an identity freed loses first what DNS
answers taught it (:func:`plugin.enforce.identities.allocate`). Order of a policy edit: the
delta, then :mod:`plugin.kernel.conntrack`-style pruning of flows the new map denies. So no
moment has more allowed than the old or the new state.

A periodic pass (and the one at start) asks each backend for drift, element
by element and rule by rule, and rewrites what drifted, logging it. Nothing
is compiled or rendered when nothing changed.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from typing import Mapping, Optional

from segmentation.compiler import segments_of
from segmentation.identities import PENDING, QUARANTINED
from segmentation.policymap import PolicyMap, compile_policy_map, recompile_policy_map
from segmentation.rules import segment_mentions

from plugin.enforce.backend import Backend, BackendUnavailable, Counters, NetworkSpec, Port
from plugin.enforce.identities import allocate, idle_kept, named_after
from plugin.kernel.conntrack import own_addresses
from plugin.enforce.fqdn import learned_counters

log = logging.getLogger(__name__)
LINK_LOCAL = "fe80::/10"   # members' own link-local addresses (conntrack.own_addresses)


def _plain(cidr: Optional[str]) -> Optional[str]:
    return str(ipaddress.ip_interface(cidr).ip) if cidr else None


def network_spec(net) -> NetworkSpec:
    """The datapath's view of a NetworkRecord."""
    pools = net.ipv4 + net.ipv6
    return NetworkSpec(id=net.id, bridge=net.bridge, subnets=tuple(p for p, _ in pools),
                       gateways=tuple(_plain(g) for _, g in pools if g), internal=net.internal,
                       mode=net.options.mode)


def port_of(ep, identities: Mapping[str, int]) -> Port:
    """The datapath's view of an EndpointRecord, with its segment's identity."""
    if ep.quarantine is not None:
        identity = QUARANTINED
    elif ep.segment is None or ep.segment not in identities:
        identity = PENDING
    else:
        identity = identities[ep.segment]
    return Port(endpoint_id=ep.id, name=ep.veth_host, mac=ep.mac, ipv4=_plain(ep.ipv4),
                ipv6=_plain(ep.ipv6), identity=identity, segment=ep.segment, quarantine=ep.quarantine,
                published=tuple(tuple(p) for p in ep.ports))


def _enforced_in(port) -> Optional[str]:
    """The segment ``port`` is enforced in (None: pending or quarantined)."""
    return port.segment if port is not None and port.quarantine is None else None


@dataclass
class Realized:
    """What is in the kernel for one network, as last applied. Change ``ports``
    through :meth:`put_port` and :meth:`pop_port` (they keep ``members``)."""

    spec: NetworkSpec
    policy: PolicyMap
    ports: dict = field(default_factory=dict)  # endpoint id -> Port
    options: object = None                     # the NetworkOptions ``policy`` was compiled from
    named: collections.Counter = None          # segment -> how many times ``options``' rules name it
    members: collections.Counter = field(init=False)   # segment -> ports enforced in it

    def __post_init__(self) -> None:
        self.members = collections.Counter(filter(None, map(_enforced_in, self.ports.values())))

    def put_port(self, port) -> None:
        self.pop_port(port.endpoint_id)
        self.ports[port.endpoint_id] = port
        if _enforced_in(port) is not None:
            self.members[port.segment] += 1

    def pop_port(self, endpoint_id: str):
        """Forget the port of ``endpoint_id``; returns it (None if there was none)."""
        port = self.ports.pop(endpoint_id, None)
        segment = _enforced_in(port)
        if segment is not None:
            self.members[segment] -= 1
            if not self.members[segment]:
                del self.members[segment]
        return port

    def live_segments(self, but: Optional[str] = None) -> set:
        """Segments that the ports (all but endpoint ``but``) are enforced in:
        O(segments), not O(ports)."""
        live = set(self.members)
        segment = _enforced_in(self.ports.get(but)) if but is not None else None
        if segment is not None and self.members[segment] == 1:
            live.discard(segment)
        return live


class Reconciler:
    """Applies networks, endpoints and policies through each network's backend.

    ``backends``: backend name (``secnet.backend``) -> Backend; ``allocator``:
    segment identities (the state); ``flows``: the one writer of conntrack
    entries (:class:`plugin.kernel.conntrack.Flows`; None: flows are left
    alone, for tests of the datapath alone). ``lock`` is the driver's: a pass
    never judges the kernel in the middle of a verb. ``dns``: the
    :class:`plugin.dns.service.DnsService` told of every network, policy and
    port it puts in force (None: no DNS learning; ``dns(...)`` rules allow nothing).
    """

    def __init__(self, state, backends: Mapping[str, Backend], allocator=None, flows=None,
                 interval: float = 300.0, lock=None, dns=None):
        self.state = state
        self.backends = dict(backends)
        self.allocator = allocator or state
        self.flows = flows
        self.dns = dns
        self.interval = interval
        self.repairs = 0
        self._realized: dict = {}
        self._unfixable: dict = {}   # network id -> drift a rewrite did not remove (no repair loop)
        self._lock = lock or threading.RLock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def backend(self, net) -> Backend:
        """The backend of ``net`` (KeyError names it if this daemon has none)."""
        return self.backends[net.options.backend]

    def link_first(self, net) -> bool:
        """Must an endpoint's link exist before the backend is told of it? (eBPF: yes.)"""
        return getattr(self.backend(net), "attaches_to_links", False)

    def bridge_options(self, net) -> tuple:
        """What a new bridge of ``net`` is made with (``Backend.bridge_options``)."""
        return tuple(getattr(self.backend(net), "bridge_options", ()))

    def brings_segment(self, net, ep) -> bool:
        """Would ``ep``'s join bring a segment with new entries (no identity yet, no idle
        one to take over)? A hint for ordering work, read without the lock."""
        real = self._realized.get(net.id)
        return (real is not None and ep.segment is not None and ep.quarantine is None
                and ep.segment not in real.policy.identities
                and idle_kept(real, real.live_segments(but=ep.id), net.options.default_segment) is None)

    def check_backend(self, name: str) -> None:
        """Raise BackendUnavailable (one line naming ``secnet.backend``) unless backend
        ``name`` can run on this host."""
        backend = self.backends.get(name)
        if backend is None:
            raise BackendUnavailable(f"secnet.backend={name} is not available in this daemon")
        backend.check_host()

    # --- what the driver calls -------------------------------------------
    def network_added(self, net, endpoints=None, bridge_made: bool = False) -> None:
        """``bridge_made``: its bridge was made just now with :meth:`bridge_options`."""
        with self._lock:
            eps = self.state.endpoints(net.id) if endpoints is None else list(endpoints)
            self._write_whole(net, eps, bridge_made)

    def network_removed(self, net) -> None:
        with self._lock:
            self.backend(net).remove_network(net.id)
            self._tell_dns("removed", net.id)
            real = self._realized.pop(net.id, None)
            if real is not None and self.flows is not None:  # endpoints Docker never deleted
                self.flows.forget([a for p in real.ports.values() for a in own_addresses(p)])
            self._watch_flows()

    def endpoint_changed(self, net, ep, grouped: bool = False) -> None:
        """Put ``ep``'s port (and a segment it brings) in force. ``grouped``: the caller
        makes its link in the network's interface group (``Backend.apply_ports``)."""
        with self._lock:
            real = self._real(net)
            old = real.ports.get(ep.id)
            if ep.segment is not None and ep.quarantine is None and ep.segment not in real.policy.identities:
                live = real.live_segments(but=ep.id)
                live |= {ep.segment} | (idle_kept(real, live, net.options.default_segment) or set())
                self._policy_delta(net, real, live, joining=ep, grouped=grouped)  # entries and port: one step
            new = port_of(ep, real.policy.identities)
            now = real.ports.get(ep.id)
            if new != now:
                self.backend(net).apply_ports(real.spec, [(now, new)], grouped=grouped)
                real.put_port(new)
                self._tell_dns("ports", net.id, [(now, new)])
            self._flows_after(real, old, new)

    def _flows_after(self, real: Realized, old: Optional[Port], new: Port) -> None:
        """Conntrack after a port change: flows to ports it just published must reach
        it; the flows it had (segment, quarantine, published ports) are judged again."""
        if self.flows is None:
            return
        fresh = set(new.published) if new.active else set()
        fresh -= set(old.published) if old is not None and old.active else set()
        if fresh:
            self.flows.claim(sorted(fresh), new.ipv4, new.ipv6)
        if old is not None and old.active and (
                (old.identity, old.quarantine) != (new.identity, new.quarantine)
                or set(old.published) - set(new.published)):
            self._end_denied_flows(real, only=set(own_addresses(old)))

    def endpoint_removed(self, net, ep) -> None:
        with self._lock:
            real = self._real(net)
            old = real.pop_port(ep.id) or port_of(ep, real.policy.identities)
            self.backend(net).apply_ports(real.spec, [(old, None)])
            self._tell_dns("ports", net.id, [(old, None)])
            # before DeleteEndpoint returns: Docker may hand the address to the next
            # container only then, and no entry of this one may be left (either tuple)
            if self.flows is not None:
                self.flows.forget(own_addresses(old))

    def policy_changed(self, net, edit=None) -> None:
        """Options (rules, mode, ...) of ``net`` changed: apply the delta, end denied flows.
        ``edit``: the :class:`~segmentation.model.RuleEdit` that made its rules, if one did
        (then only the rules it touched are compiled)."""
        with self._lock:
            real = self._real(net)
            spec = network_spec(net)
            if spec != real.spec:
                real.spec = spec
            if self._policy_delta(net, real, real.live_segments(), edit):
                self._end_denied_flows(real)

    def _end_denied_flows(self, real: Realized, only: Optional[set] = None) -> int:
        """End the established flows (published and NAT'd ones too) that the realized
        policy denies; ``only``: those naming these addresses. Never in audit mode."""
        if self.flows is None or real.policy.settings.mode == "audit":
            return 0
        learned, admitted = self._learned(real.spec.id)
        ended = self.flows.enforce_policy(real.policy, list(real.ports.values()), only,
                                          learned=learned, admitted=admitted)
        backend = self.backends.get(getattr(real.options, "backend", None))
        end_learned = getattr(backend, "end_learned_flows", None)
        if end_learned is not None and only is None:   # its own conntrack (eBPF): what no rule keeps
            try:
                ended = (ended or 0) + end_learned(real.spec, real.policy, learned, admitted)
            except Exception:
                log.exception("network %s: flows of removed DNS rules not ended", real.spec.id[:12])
                return ended
        if only is None:   # their flows ended: what removed rules taught is not needed any more
            self._tell_dns("settled", real.spec.id, real.policy)
        return ended

    def _learned(self, network_id: str) -> tuple:
        """``(learned, admitted)``: the DNS answers in force for the network and which
        rules taught each address (``DnsService.admitted``); None, None: unknown (flows
        to learned addresses end; those they admitted go on while a dns(...) rule of
        their segment names their service)."""
        try:
            if self.dns is not None:
                return self.dns.learned(network_id), self.dns.admitted(network_id)
        except Exception:
            log.exception("learned DNS addresses of %s unknown", network_id[:12])
        return None, None

    # --- reads -----------------------------------------------------------
    def compiled(self, net) -> PolicyMap:
        """The policy map in force for ``net``."""
        with self._lock:
            return self._real(net).policy

    def ports(self, net) -> list:
        with self._lock:
            return list(self._real(net).ports.values())

    def counters(self, net) -> Counters:
        """The backend's counters, a DNS rule's under its own key (``learned_counters``)."""
        real = self._real(net)
        tags = self.dns.tags(net.id) if self.dns is not None else {}
        return learned_counters(self.backend(net).counters(real.spec), real.policy, tags)

    # --- internals -------------------------------------------------------
    def _real(self, net) -> Realized:
        real = self._realized.get(net.id)
        if real is None:
            real = self._desired(net, self.state.endpoints(net.id))
            self._realized[net.id] = real
        return real

    def _desired(self, net, endpoints) -> Realized:
        live = (e.segment for e in endpoints if e.quarantine is None)
        named = collections.Counter(segment_mentions(net.options.rules))
        identities = self._allocate(net, segments_of(net.options, live, named))
        policy = compile_policy_map(net.options, identities)
        ports = {e.id: port_of(e, identities) for e in endpoints}
        return Realized(network_spec(net), policy, ports, net.options, named)

    def _allocate(self, net, segments) -> Mapping[str, int]:
        """Identities of ``segments``: those freed lose what DNS answers taught them first."""
        return allocate(self.allocator, net.id, segments, self.dns, self.backends.get(net.options.backend))

    def _write_whole(self, net, endpoints, bridge_made: bool = False) -> Realized:
        real = self._desired(net, endpoints)
        backend = self.backend(net)
        backend.apply_network(real.spec, real.policy, real.ports.values(), bridge_made=bridge_made)
        self._realized[net.id] = real
        self._watch_flows()
        self._tell_dns("network", net.id, real.spec.bridge, real.policy, list(real.ports.values()), backend)
        return real

    def _watch_flows(self) -> None:
        """Tell the conntrack writer the subnets of every network realized here."""
        watch = getattr(self.flows, "watch", None)
        if watch is not None:
            subnets = {s for real in self._realized.values() for s in real.spec.subnets}
            watch(subnets | ({LINK_LOCAL} if subnets else set()))   # members' own link-local flows

    def _policy_delta(self, net, real: Realized, live: set, edit=None, joining=None,
                      grouped: bool = False) -> bool:
        """Recompile ``net``'s policy over the segments ``live`` (those members are
        enforced in) and apply only the difference; ``edit``: the RuleEdit that made
        its rules from the realized ones, if one did; ``joining``: the EndpointRecord
        whose join brings a segment (its port goes in the same step; ``grouped``: as
        :meth:`endpoint_changed`'s, its link is put in the interface group by the caller's
        link writer). Returns whether
        the change may deny a flow that was allowed (anything but east-west entries added).

        Identities of live segments are kept, so no other port changes identity here.
        """
        named = named_after(real, net.options, edit)
        identities = self._allocate(net, segments_of(net.options, live, named))
        new, delta = recompile_policy_map(real.policy, real.options, net.options, identities, edit)
        changes = []
        if joining is not None and not delta.empty:
            port = port_of(joining, identities)
            if port != real.ports.get(joining.id):
                changes.append((real.ports.get(joining.id), port))
        if not delta.empty:
            self.backend(net).apply_policy(real.spec, delta, changes, policy=new, grouped=grouped)
        old_ids, real.policy, real.options, real.named = real.policy.identities, new, net.options, named
        for _old, port in changes:
            real.put_port(port)
        if delta.fqdns_added or delta.fqdns_removed:   # the DNS rules changed: the service looks again
            self._tell_dns("network", net.id, real.spec.bridge, new, list(real.ports.values()))
        elif not delta.empty or new.identities is not old_ids:   # (or an idle identity taken over)
            self._tell_dns("policy", net.id, new)
            if changes:
                self._tell_dns("ports", net.id, changes)
        return bool(delta.entries_removed or delta.cidrs_added or delta.cidrs_removed or delta.settings
                    or delta.fqdns_removed)

    def _tell_dns(self, what: str, *args) -> None:
        """Tell the DNS service what is in force now; a failure only costs learning
        (answers to the network are not learned: their addresses stay denied)."""
        if self.dns is None:
            return
        try:
            getattr(self.dns, what)(*args)
        except Exception:
            log.exception("DNS learning not updated (%s %s)", what, str(args[0])[:12] if args else "")

    def drift(self, net) -> list:
        """What differs between the kernel and the desired state of ``net``."""
        real = self._real(net)
        return self.backend(net).drift(real.spec, real.policy, real.ports.values())

    def reconcile(self, full: bool = True) -> int:
        """Repair every network whose kernel state drifted; returns how many.

        ``full`` (at start) also writes every network once and removes kernel
        state no network owns.
        """
        repaired = 0
        with self._lock:
            owned = set(self._realized)
            for net in self.state.networks():
                owned.add(net.id)
                try:
                    repaired += self._repair(net, full)
                except Exception:
                    log.exception("reconcile of network %s failed", net.id[:12])
            if full:
                repaired += self._remove_orphans(owned)
            self._tell_dns("repair")
        self.repairs += repaired
        return repaired

    def _repair(self, net, full: bool) -> int:
        if net.options.backend not in self.backends:
            log.error("network %s: backend %s is not available", net.id[:12], net.options.backend)
            return 0
        if full or net.id not in self._realized:
            self._realized.pop(net.id, None)
            self._write_whole(net, self.state.endpoints(net.id))
            return 0
        problems = self.drift(net)
        if not problems:
            self._unfixable.pop(net.id, None)
            return 0
        if self._unfixable.get(net.id) == problems:
            return 0   # a rewrite did not make this difference go away: do not loop on it
        log.warning("network %s drifted (%s); rewriting it", net.id[:12], "; ".join(problems[:5]))
        real = self._write_whole(net, self.state.endpoints(net.id))
        self._end_denied_flows(real)   # what the drifted kernel let through must not go on
        left = self.drift(net)
        if left:
            # A difference a fresh rewrite does not remove is in how it is read back, not
            # in what is enforced; rewriting again would loop (each rewrite notifies).
            log.error("network %s: drift remains right after a rewrite (%s); not repairing it "
                      "again until it changes", net.id[:12], "; ".join(left[:3]))
            self._unfixable[net.id] = left
        return 1

    def _remove_orphans(self, owned: set) -> int:
        removed = 0
        short = {nid[:12] for nid in owned}
        for backend in self.backends.values():
            for nid in backend.networks():
                if nid not in owned and nid[:12] not in short:
                    backend.remove_network(nid)
                    log.warning("removed %s state of a network no record owns: %s", backend.name, nid[:12])
                    removed += 1
        return removed

    def repair_network(self, network_id: str) -> None:
        """Check one network now (a change notification named it) and rewrite it if it drifted."""
        with self._lock:
            net = self.state.get_network(network_id)
            if net is not None and net.id in self._realized:
                self.repairs += self._repair(net, full=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="secnet-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile(full=False)
            except Exception:
                log.exception("reconcile pass failed")
