"""The daemon's parts beyond the bare driver: policy writer, label watcher, CLI API,
drop log and metrics."""
from __future__ import annotations

import logging

from segmentation.backends.nft_verdicts import NFLOG_GROUP

from .api import Api
from .droplog import Directory, DropLog
from .forward import ForwardFilter
from .labels import LabelResolver
from .metrics import Metrics
from .nflog import NflogReader
from .nftwatch import NftWatcher
from .reconciler import Reconciler

log = logging.getLogger(__name__)


def attach_extensions(driver, settings):
    """Attach the policy writer, label resolver, drop log and metrics; returns the CLI API."""
    driver.policy = Reconciler(driver.state, lock=driver.lock)
    driver.resolver = LabelResolver(settings.docker_host)
    driver.droplog = DropLog(settings.state_dir, Directory(driver.state))
    driver.nflog = None
    driver.metrics = Metrics(driver)
    driver.metrics_addr = settings.metrics_addr
    return Api(driver)


def start_background(driver) -> None:
    """Start the threads that run after restore: drop log, metrics, reconciler, label watcher."""
    start_visibility(driver)
    try:
        driver.policy.reconcile()
    except Exception:  # the periodic pass will try again; never refuse to serve
        log.exception("first reconcile pass failed")
    driver.policy.start()
    start_forward_watch(driver)
    if hasattr(driver.resolver, "start"):
        driver.resolver.start(driver)


def start_forward_watch(driver) -> None:
    """Repair the forward rules within ~0.1 s of someone removing them (nft
    notifications), and adopt the engine's firewall on every engine (re)connect."""
    forward = driver.firewall
    if not isinstance(forward, ForwardFilter):
        return
    forward.start()
    driver.nftwatch = None
    try:
        driver.nftwatch = NftWatcher().start()
        driver.nftwatch.subscribe(forward.trigger, forward.interested)
    except OSError as exc:  # the minute-long periodic pass still repairs
        log.error("cannot follow nftables changes: %s", exc)
    hooks = getattr(driver.resolver, "connect_hooks", None)
    if hooks is not None:
        hooks.append(forward.engine_connected)


def start_visibility(driver) -> None:
    """The NFLOG reader and, when asked for, the metrics endpoint; neither failure is fatal."""
    driver.nflog = NflogReader(NFLOG_GROUP, driver.droplog.handle).start()  # binds in its thread
    if getattr(driver, "metrics_addr", ""):
        try:
            driver.metrics.serve(driver.metrics_addr)
        except (OSError, ValueError) as exc:
            log.error("cannot serve metrics on %s: %s", driver.metrics_addr, exc)
