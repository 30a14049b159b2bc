"""The daemon's object graph, built once at start: :func:`build` and :func:`start`.

Every part gets what it uses in its constructor; nothing is attached later.
Data flow of a join: HTTP body -> ``driver.protocol`` -> ``Driver.join`` ->
``labels`` resolves the segment -> ``state`` (saved) -> ``Reconciler``
computes the delta -> the network's backend applies it in one transaction.
Data flow of a policy edit: CLI -> ``daemon.api`` -> ``Driver.edit_options``
-> ``state`` (saved first) -> ``Reconciler.policy_changed`` (compile,
policy-map delta, backend) -> ``kernel.conntrack`` ends the flows the new
policy denies.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from plugin.config import Settings
from plugin.daemon.api import Api
from plugin.driver.driver import Driver
from plugin.driver.labels import LabelResolver
from plugin.driver.state import State
from plugin.enforce.reconciler import Reconciler
from plugin.kernel import conntrack
from plugin.kernel.ctindex import FlowIndex
from plugin.enforce.hostfw.dockerfw import DockerFirewall
from plugin.enforce.hostfw.forward import ForwardFilter
from plugin.kernel.links import Netlink
from plugin.enforce.hostfw.nftguard import NftGuard
from plugin.kernel.debounced import Debouncer
from plugin.kernel.nftwatch import NftWatcher
from plugin.observe.droplog import Directory, DropLog
from plugin.observe.metrics import Metrics

log = logging.getLogger(__name__)


def make_dns(settings: Settings):
    """The DNS-learning service (``dns(NAME)`` rules), or None when this host cannot
    read an NFQUEUE (then those rules allow nothing: fail closed, logged)."""
    if not settings.dns:
        return None
    try:
        from plugin.enforce.nftables.dnsmarks import AnswerMarks
        from plugin.dns.service import DnsService
        from plugin.enforce.nftables.runner import NftRunner
    except ImportError as exc:
        log.error("DNS-name rules cannot learn (missing %s): they allow nothing", exc.name)
        return None
    return DnsService(AnswerMarks(NftRunner(), settings.dns_queue))


def make_backends(settings: Settings = Settings()) -> dict:
    """backend name (``secnet.backend``) -> Backend, for every datapath this daemon has."""
    from plugin.enforce.ebpf.backend import EbpfBackend
    from plugin.enforce.nftables.backend import NftBackend
    from plugin.enforce.nftables.natonly import NatTable
    return {"nftables": NftBackend(), "ebpf": EbpfBackend(nat=NatTable(), mount_bpffs=settings.bpffs_mount)}


@dataclass
class Daemon:
    """Every long-lived part of one daemon."""

    settings: Settings
    state: State
    driver: Driver
    reconciler: Reconciler
    resolver: LabelResolver
    droplog: DropLog
    metrics: Metrics
    api: Api
    backends: dict = field(default_factory=dict)
    firewall: object = None
    nftwatch: object = None
    dns: object = None
    tcwatch: object = None
    portwatch: object = None


def build(settings: Settings, backends=None, links=None, firewall=None, dns=None) -> Daemon:
    """Build the daemon's parts (no thread started, no kernel state changed)."""
    state = State(settings.state_dir)
    backends = make_backends(settings) if backends is None else backends
    dns = make_dns(settings) if dns is None else dns
    lock = threading.RLock()  # the driver's verbs and the reconciler's passes, one at a time
    flows = conntrack.Flows(index=FlowIndex())   # answers once started (start_flow_index)
    reconciler = Reconciler(state, backends, allocator=state, flows=flows, lock=lock, dns=dns)
    firewall = firewall or ForwardFilter(DockerFirewall(), NftGuard())
    driver = Driver(state, links or Netlink(), firewall, reconciler,
                    LabelResolver(settings.docker_host), lock=lock)
    droplog = DropLog(settings.state_dir, Directory(state))
    metrics = Metrics(state, reconciler, droplog)
    api = Api(driver, reconciler, droplog, metrics, engine=getattr(firewall, "status", None))
    return Daemon(settings, state, driver, reconciler, driver.resolver, droplog, metrics, api, backends,
                  firewall, dns=dns)


def start(daemon: Daemon) -> None:
    """Restore, reconcile once, then start the background threads; none of it is fatal."""
    start_flow_index(daemon)
    start_dns(daemon)
    daemon.driver.restore()
    try:
        daemon.reconciler.reconcile()
    except Exception:  # the periodic pass will try again; never refuse to serve
        log.exception("first reconcile pass failed")
    else:
        settle_dns(daemon)
    daemon.reconciler.start()
    for backend in daemon.backends.values():
        try:
            backend.watch_drops(daemon.droplog.record)
        except Exception:
            log.exception("cannot read drop events of the %s backend", backend.name)
    start_watches(daemon)
    start_tc_watch(daemon)
    start_port_watch(daemon)
    daemon.resolver.start(daemon.driver)
    if daemon.settings.metrics_addr:
        try:
            daemon.metrics.serve(daemon.settings.metrics_addr)
        except (OSError, ValueError) as exc:
            log.error("cannot serve metrics on %s: %s", daemon.settings.metrics_addr, exc)


def settle_dns(daemon: Daemon) -> None:
    """After the first pass: the DNS hold's table and queue rules go if no answer is to
    be held (plugin.enforce.nftables.dnsmarks)."""
    if daemon.dns is None:
        return
    try:
        daemon.dns.settle()
    except Exception as exc:   # they stay: answers to nobody are not held anyway
        log.warning("cannot remove the unused DNS answer hold: %s", exc)


def start_flow_index(daemon: Daemon) -> None:
    """Follow conntrack's events, so that ending the flows a change denies reads an
    index instead of dumping the whole table; without it every such read dumps."""
    index = getattr(daemon.reconciler.flows, "index", None)
    if index is None:
        return
    try:
        index.start()
    except OSError as exc:
        log.warning("cannot follow conntrack events (%s): ending denied flows dumps the table", exc)


def start_dns(daemon: Daemon) -> None:
    """Hold DNS answers and read them, before any network is restored (so the restore
    tells the service every network, and it adopts what the kernel still holds)."""
    if daemon.dns is None:
        return
    try:
        daemon.dns.start()
        log.info("DNS learning: answers to segments with dns(...) rules are held in NFQUEUE %d",
                 daemon.dns.queue_num)
    except Exception:   # nothing is learned: dns(...) rules allow nothing (fail closed)
        log.exception("cannot read DNS answers (queue %s): DNS-name rules allow nothing",
                      daemon.dns.queue_num)


def start_watches(daemon: Daemon) -> None:
    """Follow nftables change notifications: the forward rules outside secnet's tables
    are re-ensured, and a network whose tables someone else changed is checked and
    repaired, each within ~0.1 s (the periodic pass stays as a safety net). Engine
    (re)connects re-detect the engine's firewall."""
    forward = daemon.firewall
    if isinstance(forward, ForwardFilter):
        forward.start()
        daemon.resolver.connect_hooks.append(forward.engine_connected)
    try:
        daemon.nftwatch = NftWatcher().start()
    except OSError as exc:
        log.error("cannot follow nftables changes (the periodic pass still repairs): %s", exc)
        return
    if isinstance(forward, ForwardFilter):
        daemon.nftwatch.subscribe(forward.trigger, forward.interested)
    watch_nft_tables(daemon.nftwatch, lambda: daemon.reconciler.reconcile(full=False),
                     daemon.backends.values())


def watch_nft_tables(watcher: NftWatcher, repair: Callable[[], object], backends) -> Optional[Debouncer]:
    """A network whose nft tables someone else changed is checked and repaired ~0.1 s
    after the notification (``repair``: the reconciler's pass, drift then rewrite);
    returns the Debouncer that runs it (None: no backend owns tables)."""
    owners = [b for b in backends if hasattr(b, "owns")]
    watcher.ignore_own_threads()   # the daemon's own libnftables writes (whole tables) need none either
    for backend in owners:   # a backend's own element deltas need no repair check
        for portid in getattr(backend, "own_ports", lambda: ())():
            watcher.ignore_port(portid)
        if hasattr(backend, "quiet_batches"):   # nor per-element notifications built
            backend.quiet_batches(watcher)
    if not owners:
        return None
    debouncer = Debouncer(repair, name="secnet-repair").start()
    watcher.subscribe(debouncer.trigger, repair_wanted(owners))
    return debouncer


def repair_wanted(owners: list) -> Callable:
    """The nft change notifications that call for a repair check: one that touched a
    table of ``owners`` (backends with ``owns``), and every ``resync`` (notifications
    were lost: what changed meanwhile is unknown)."""
    return lambda event: event.kind == "resync" or any(b.owns(event) is not None for b in owners)


def start_port_watch(daemon: Daemon) -> None:
    """Follow link notifications (plugin.driver.portwatch): a member's veth someone took off
    its network's bridge is put back within ~0.1 s; without them nothing notices it."""
    if not hasattr(daemon.driver.links, "port_of"):
        return
    from plugin.driver.portwatch import PortWatch   # noqa: PLC0415
    try:
        daemon.portwatch = PortWatch(daemon.driver).start()
    except OSError as exc:
        log.error("cannot follow link changes (a veth taken off its bridge is not put back): %s", exc)


def start_tc_watch(daemon: Daemon) -> None:
    """Follow tc notifications for the eBPF networks (plugin.enforce.ebpf.hookwatch): a veth
    whose program someone detached is repaired within ~0.1 s; without them only the
    periodic pass repairs it (logged)."""
    if not any(getattr(b, "attaches_to_links", False) for b in daemon.backends.values()):
        return
    from plugin.enforce.ebpf.hookwatch import HookWatch   # noqa: PLC0415 (only with an eBPF backend)
    try:
        daemon.tcwatch = HookWatch(daemon.reconciler, daemon.backends.values()).start()
    except OSError as exc:
        log.error("cannot follow tc changes (the periodic pass still repairs eBPF networks): %s", exc)
