"""The enforcement seam: what every datapath (nftables, eBPF) implements.

The reconciler is the only caller. It hands a backend backend-neutral data
-- a :class:`NetworkSpec`, the network's :class:`~segmentation.policymap.PolicyMap`
and one :class:`Port` per endpoint -- and the backend turns it into kernel
state in one atomic step per call. Reads (drift, counters, drop events)
come back in the same neutral terms (identities, policy-map keys, reasons),
so that ``show``, ``metrics``, ``log``, ``explain`` and ``verify`` never
know which datapath runs.

A backend never decides semantics: those live in ``segmentation``
(``policymap`` for what is allowed, ``identities`` for the reserved
identities). Both backends must give the same verdict on every packet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Protocol

from plugin.kernel.addresses import link_local
from segmentation.identities import PENDING, QUARANTINED
from segmentation.policymap import PolicyDelta, PolicyMap

#: drop reasons, as the drop log and the metrics name them (the eBPF datapath's
#: ``enum reason``, bpf/lib/common.h, indexes this: append, never reorder)
REASONS = ("no-rule", "egress", "internal", "not-member", "invalid",
           "quarantined", "pending", "spoofed", "ethertype", "loopback", "router")
#: the reasons whose drops are counted per identity pair, on both backends: policy's
#: between segments and to or from the outside (docs/visibility.md). The others
#: (spoofed, invalid, not-member, ethertype, loopback, router, and an inactive
#: container's drops in enforce mode) are counted per reason only; every would-drop
#: (audit mode) is counted per pair as well
PAIRED = ("no-rule", "egress", "internal")


class BackendError(Exception):
    """The kernel refused a backend's change (the message says what and why)."""


class BackendUnavailable(BackendError):
    """This host cannot run the backend (e.g. a kernel too old for eBPF)."""


@dataclass(frozen=True)
class NetworkSpec:
    """What a datapath needs to know of one network.

    ``subnets``: CIDRs (IPv4 and IPv6) of the network; ``gateways``: plain
    addresses of the bridge; ``mode``: ``enforce`` or ``audit``.
    """

    id: str
    bridge: str
    subnets: tuple = ()
    gateways: tuple = ()
    internal: bool = False
    mode: str = "enforce"


@dataclass(frozen=True)
class Port:
    """One endpoint as the datapath sees it.

    ``name``: the host side of its veth (the bridge port); ``ipv4``/``ipv6``:
    plain addresses (no prefix) or None; ``identity``: its segment's
    identity, or ``PENDING``/``QUARANTINED``; ``published``: tuples
    ``(proto, host_ip, host_port, container_port)``, host_ip as Docker sent it
    (:func:`host_families`: ``""`` every address, ``0.0.0.0``/``::`` every
    address of one family).
    """

    endpoint_id: str
    name: str
    mac: str
    ipv4: Optional[str] = None
    ipv6: Optional[str] = None
    identity: int = PENDING
    segment: Optional[str] = None
    quarantine: Optional[str] = None
    published: tuple = ()

    @property
    def active(self) -> bool:
        """Enforced in a segment (not pending, not quarantined)."""
        return self.identity not in (PENDING, QUARANTINED)

    @property
    def addresses(self) -> tuple:
        return tuple(a for a in (self.ipv4, self.ipv6) if a)

    @property
    def link_local(self) -> str:
        """Its own IPv6 link-local address (:func:`link_local` of its MAC): a member's
        address as well, judged like the others, but neither published nor shown."""
        return link_local(self.mac)


@dataclass(frozen=True)
class Counters:
    """Packet and byte counters of one network, in neutral terms.

    ``allowed``: policy-map key (``PolicyEntry.key`` or ``CidrEntry.key``) ->
    ``(packets, bytes)`` of the flows it opened (a flow that several keys allow,
    e.g. a piece of overlapping port ranges or CIDRs, counts for each of them);
    ``allowed_once``: the same counters, each given to one of those keys only
    (the first in sorted order), so that sums over keys (segment-pair totals)
    count every packet once; ``dropped``: ``(src identity,
    dst identity)`` -> ``(packets, bytes)``; ``reasons``: drop reason ->
    ``(packets, bytes)``. ``would_drop`` and ``would_drop_reasons``: the same
    as ``dropped`` and ``reasons`` for what audit mode let pass.
    """

    allowed: Mapping = field(default_factory=dict)
    allowed_once: Mapping = field(default_factory=dict)
    dropped: Mapping = field(default_factory=dict)
    reasons: Mapping = field(default_factory=dict)
    would_drop: Mapping = field(default_factory=dict)
    would_drop_reasons: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class DropEvent:
    """One dropped (or, in audit mode, would-be-dropped) flow, as the kernel reported it.

    ``network``: the network id (or its first 12 characters); ``family``:
    4, 6 or 0 (not IP); ``proto``: the IP protocol number, or its name (``tcp``,
    ``udp``, ``icmp``, ``icmpv6``); ``port``/``sport``:
    destination/source port or None; ``ifname``/``out_ifname``: the bridge
    ports it came in on and was going out of, when known; ``time``: seconds
    since the epoch; ``audit``: passed because the network is in audit mode.
    """

    network: str
    reason: str
    family: int
    proto: object
    src: str
    dst: str
    port: Optional[int] = None
    ifname: Optional[str] = None
    audit: bool = False
    time: float = 0.0
    sport: Optional[int] = None
    icmp_type: Optional[int] = None
    out_ifname: Optional[str] = None


class Backend(Protocol):
    """A datapath. Every write is atomic (one transaction) and idempotent."""

    name: str
    #: True when a port's link must exist before it is applied (the backend attaches to it)
    attaches_to_links: bool = False
    #: ``(attribute, value)`` pairs a new bridge of this backend's networks is made with, in
    #: the bridge's own ``link add`` (pyroute2's names of ``IFLA_BR_*``, include/uapi/linux/if_link.h)
    bridge_options: tuple = ()

    def check_host(self) -> None:
        """Raise BackendUnavailable (one line, naming what is missing) if this
        host cannot run the backend. Called at ``docker network create``."""

    def apply_network(self, net: NetworkSpec, policy: PolicyMap, ports: Iterable[Port],
                      bridge_made: bool = False) -> None:
        """Replace all kernel state of ``net`` (a create, a restore, a drift repair).
        ``bridge_made``: the caller's link writer made ``net.bridge`` just now, with
        :attr:`bridge_options` (CreateNetwork): the backend need not read them back."""

    def apply_ports(self, net: NetworkSpec, changes: Iterable[tuple], grouped: bool = False) -> None:
        """Apply endpoint changes ``(old Port or None, new Port or None)`` in one step.
        ``grouped``: the caller's link writer puts the new ports' links in the network's
        interface group itself, before the caller answers (CreateEndpoint)."""

    def apply_policy(self, net: NetworkSpec, delta: PolicyDelta, changes: Iterable[tuple] = (),
                     policy: Optional[PolicyMap] = None, grouped: bool = False) -> None:
        """Apply a policy-map delta (an edit, a new segment, a mode switch) in one step,
        with endpoint ``changes`` as in :meth:`apply_ports` (a join that brings a new
        segment: one step; ``grouped`` as there). ``policy``: the map after ``delta``, when
        the caller has it (else the backend applies ``delta`` to the map it holds: a copy
        of every entry)."""

    def remove_network(self, network_id: str) -> None:
        """Remove all kernel state of a network; nothing there is fine."""

    def networks(self) -> set:
        """Ids (or 12-character prefixes) of the networks with kernel state of this backend."""

    def drift(self, net: NetworkSpec, policy: PolicyMap, ports: Iterable[Port]) -> list:
        """What differs between the kernel and the desired state, element by
        element and rule by rule; one short line each, empty when none."""

    def counters(self, net: NetworkSpec) -> Counters:
        """Counters of ``net``, read now (never polled)."""

    def watch_drops(self, callback: Callable[[DropEvent], None]) -> None:
        """Start delivering drop events to ``callback`` (from a thread of its own)."""

    def close(self) -> None:
        """Stop background readers; kernel state stays (it keeps enforcing)."""
