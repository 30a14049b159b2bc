"""The daemon's parts beyond the bare driver: policy writer, label watcher, CLI API,
drop log and metrics."""
from __future__ import annotations

import logging

from segmentation.backends.nft_verdicts import NFLOG_GROUP

from plugin.daemon.api import Api
from plugin.observe.droplog import Directory, DropLog
from plugin.driver.labels import LabelResolver
from plugin.observe.metrics import Metrics
from plugin.nflog import NflogReader
from plugin.enforce.reconciler import Reconciler

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
    if hasattr(driver.resolver, "start"):
        driver.resolver.start(driver)


def start_visibility(driver) -> None:
    """The NFLOG reader and, when asked for, the metrics endpoint; neither failure is fatal."""
    driver.nflog = NflogReader(NFLOG_GROUP, driver.droplog.handle).start()  # binds in its thread
    if getattr(driver, "metrics_addr", ""):
        try:
            driver.metrics.serve(driver.metrics_addr)
        except (OSError, ValueError) as exc:
            log.error("cannot serve metrics on %s: %s", driver.metrics_addr, exc)
