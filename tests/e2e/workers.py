"""The e2e tier on pytest-xdist workers (``-n 2 --dist loadfile``): one dockerd and
one secnet daemon shared by every worker.

Most tests only add networks and containers of their own and can run beside each
other. A test marked ``@pytest.mark.exclusive`` takes the shared daemon (or the
engine, or a host-wide table) away from the others: it kills, stops or restarts the
plugin or dockerd, flushes DOCKER-USER, or floods the daemon's one drop log. While
the daemon is down every other test would fail closed (its DNS answers are held in
an NFQUEUE nobody reads, its ``docker run`` gets no driver), so such a test runs
alone: the other worker waits before its next test.

The lock is a readers-writer lock of two flock(2) files (the kernel drops a lock
when its holder dies, so a crashed worker blocks nobody):

- ``gate``: a turnstile every test passes, so that a waiting exclusive test is not
  starved by the other worker's stream of shared ones;
- ``rw``: shared (LOCK_SH) for an ordinary test, exclusive (LOCK_EX) for a marked one.

The lock is held from a test's set-up to its teardown (``pytest_runtest_protocol``),
so module fixtures set up by a module's first test and torn down by its last are
inside it. Consecutive exclusive tests of one module keep it between them (the
managed-plugin module's daemon stays swapped for its whole length).

Without xdist (``PYTEST_XDIST_WORKER`` unset) nothing is locked: a serial run needs
no lock. Errors: OSError from open/flock (an unwritable lock folder).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Optional

import pytest

SHARED, EXCLUSIVE = "shared", "exclusive"

_held: Optional[str] = None      # the mode this worker holds now, None when none
_fds: dict = {}                  # lock file name -> open descriptor (one per worker)


def parallel() -> bool:
    """True inside an xdist worker."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def _lock_dir() -> Path:
    """A folder of this run's own: every worker of one run shares it, two runs never."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "serial")
    path = Path(os.environ.get("SECNET_E2E_LOCK_DIR", "/run/lock")) / f"secnet-e2e-{run}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fd(name: str) -> int:
    if name not in _fds:
        _fds[name] = os.open(_lock_dir() / name, os.O_CREAT | os.O_RDWR, 0o644)
    return _fds[name]


def mode_of(item) -> str:
    return EXCLUSIVE if item.get_closest_marker("exclusive") else SHARED


def acquire(mode: str) -> None:
    """Take the run-wide lock in ``mode`` (blocks); releases what this worker held."""
    global _held
    if not parallel() or _held == mode:
        return
    release()
    gate, rw = _fd("gate"), _fd("rw")
    fcntl.flock(gate, fcntl.LOCK_EX)
    try:
        fcntl.flock(rw, fcntl.LOCK_EX if mode == EXCLUSIVE else fcntl.LOCK_SH)
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)
    _held = mode


def release() -> None:
    global _held
    if _held is not None:
        fcntl.flock(_fd("rw"), fcntl.LOCK_UN)
        _held = None


def keep_for(item, nextitem) -> bool:
    """Keep an exclusive lock into ``nextitem``: it is exclusive too, in the same module."""
    return (nextitem is not None and mode_of(item) == EXCLUSIVE and mode_of(nextitem) == EXCLUSIVE
            and nextitem.module is item.module)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist, each test runs inside the run-wide lock: shared, or alone when
    marked ``exclusive`` (set-up and teardown included). A conftest takes this hook
    in by importing it (``from workers import pytest_runtest_protocol``)."""
    acquire(mode_of(item))
    try:
        return (yield)
    finally:
        if not keep_for(item, nextitem):
            release()


def require_exclusive(what: str) -> None:
    """Fail a test that takes the shared daemon away without ``@pytest.mark.exclusive``
    (under xdist it would break the other worker's test, not its own)."""
    if parallel() and _held != EXCLUSIVE:
        raise AssertionError(f"{what} in a test not marked @pytest.mark.exclusive "
                             "(the other xdist worker's tests need the daemon)")


@contextlib.contextmanager
def mutex(name: str):
    """A run-wide mutex of its own (e.g. around starting the plugin); a no-op without xdist."""
    if not parallel():
        yield
        return
    fd = _fd(name)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
