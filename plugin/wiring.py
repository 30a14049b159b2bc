"""The daemon's parts beyond the bare driver: policy writer, label watcher, CLI API."""
from __future__ import annotations

import logging

from .api import Api
from .labels import LabelResolver
from .reconciler import Reconciler

log = logging.getLogger(__name__)


def attach_extensions(driver, settings):
    """Attach the policy writer and label resolver to ``driver``; returns the CLI API."""
    driver.policy = Reconciler(driver.state)
    driver.resolver = LabelResolver(settings.docker_host)
    return Api(driver)


def start_background(driver) -> None:
    """Start the threads that run after restore: reconciler and label watcher."""
    try:
        driver.policy.reconcile()
    except Exception:  # the periodic pass will try again; never refuse to serve
        log.exception("first reconcile pass failed")
    driver.policy.start()
    if hasattr(driver.resolver, "start"):
        driver.resolver.start(driver)
