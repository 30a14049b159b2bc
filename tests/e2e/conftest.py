"""Fixtures of the end-to-end tier: a real dockerd, the test image and the
secnet daemon as a legacy plugin.

The session fixture brings all three up with the project's scripts; a missing
engine is an error, never a skip. ``make_network`` and ``run_container``
remove what the test created in their finalizers, also when the test fails.
"""
from __future__ import annotations

import os
import shutil
import threading

import pytest

import flow_helpers
import helpers as h
import workers
from workers import pytest_runtest_protocol  # noqa: F401  (the run-wide lock: a hook)


#: every datapath the e2e behaviour tests run on (`secnet.backend`)
BACKENDS = ("nftables", "ebpf")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """The `secnet.backend` of the test's networks: a module with
    ``pytestmark = pytest.mark.usefixtures("backend")`` runs each test on every backend."""
    h.DEFAULT_BACKEND = request.param
    yield request.param
    h.DEFAULT_BACKEND = None


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def engine_and_plugin():
    """dockerd answers, the test image exists, the secnet plugin answers."""
    if os.geteuid() != 0:
        pytest.fail("the e2e tier needs root (it drives dockerd and reads the kernel)")
    for tool in ("docker", "dockerd", "nsenter", "ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run `make deps` (scripts/install-deps.sh)")
    with workers.mutex("setup"):   # xdist: one worker at a time checks and starts
        h.script("engine.sh")
        h.script("test-image.sh")
        h.ensure_plugin()
    yield


@pytest.fixture(autouse=True)
def plugin_up():
    """Every test starts with an answering plugin (a previous test may have killed it)."""
    h.ensure_plugin()


def _cleanup(actions) -> None:
    errors = []
    for action in actions:
        try:
            action()
        except Exception as exc:  # keep cleaning; report at the end
            errors.append(str(exc))
    if errors:
        raise AssertionError("cleanup failed:\n" + "\n".join(errors))


@pytest.fixture
def make_network():
    """make_network(ipv6=False, subnet=None, subnet6=None, opts=None, driver='secnet', internal=False)."""
    created = []

    def factory(name=None, **kw) -> h.Network:
        net = h.create_network(h.unique(name or "sn-e2e"), **kw)
        created.append(net)
        return net

    yield factory
    _cleanup([lambda net=net: h.remove_network(net) for net in reversed(created)])


@pytest.fixture
def run_container(make_network):
    """run_container(net, name=None, labels=None, cmd=None, cap_add=()) -> Container.

    Thread-safe (parallel docker run); containers are removed before the
    networks of ``make_network``.
    """
    names = []
    lock = threading.Lock()

    def factory(net, name=None, **kw) -> h.Container:
        name = h.unique(name or "c")
        with lock:
            names.append(name)
        return h.run_container_named(net, name, **kw)

    yield factory
    _cleanup([lambda: names and h.docker("rm", "-f", *names, check=False)])


@pytest.fixture
def flows(run_container):
    """A flow_helpers.Flows whose long-lived flows stop before the containers go."""
    f = flow_helpers.Flows()
    yield f
    f.stop_all()
