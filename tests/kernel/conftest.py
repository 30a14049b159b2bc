"""Fixtures of the kernel tier: real netlink in a throwaway network namespace.

Each test gets a fresh namespace ``secnet-test-<uuid>`` (deleted in the
finalizer, also when the test fails) and a ``plugin.kernel.links.Netlink`` that
lives in it: the object is built and called on one worker thread that has
entered the namespace with setns(2) (``nsfixtures.InNamespace``, the
lab's helper). A network namespace is per thread, so
everything that thread does -- its rtnetlink socket, writes under
/proc/sys/net, programs it starts -- happens in the test's namespace and
never on the host. What the code did is read back with the ``ip`` command,
independently of pyroute2.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid

import pytest

from nsfixtures import InNamespace
from plugin.kernel.links import Netlink


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


def _ip(*args, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
    return res


class Namespace:
    """A named network namespace, inspected with iproute2."""

    def __init__(self, name: str):
        self.name = name

    def ip(self, *args, check=True) -> subprocess.CompletedProcess:
        return _ip("-n", self.name, *args, check=check)

    def links(self) -> list:
        return json.loads(self.ip("-j", "-d", "link", "show").stdout)

    def link(self, name: str):
        res = self.ip("-j", "-d", "link", "show", "dev", name, check=False)
        return json.loads(res.stdout)[0] if res.returncode == 0 and res.stdout.strip() else None

    def addrs(self, name: str) -> dict:
        """{"10.220.0.1/24": addr_info, ...} of the link's global addresses."""
        info = json.loads(self.ip("-j", "addr", "show", "dev", name).stdout)[0]["addr_info"]
        return {f"{a['local']}/{a['prefixlen']}": a for a in info if a.get("scope") == "global"}


@contextlib.contextmanager
def _throwaway_netns():
    """A network namespace named ``secnet-test-<hex>``, deleted on the way out."""
    if os.geteuid() != 0:
        pytest.fail("the kernel tier needs root (it creates network namespaces)")
    name = f"secnet-test-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        yield Namespace(name)
    finally:
        _ip("netns", "del", name, check=False)


@pytest.fixture
def netns():
    with _throwaway_netns() as ns:
        yield ns


@pytest.fixture
def other_netns():
    """A second namespace (plays a container's sandbox)."""
    with _throwaway_netns() as ns:
        yield ns


@pytest.fixture
def nl(netns):
    """A plugin.kernel.links.Netlink working inside ``netns``."""
    obj = InNamespace(netns.name, Netlink)
    try:
        yield obj
    finally:
        obj.shutdown()
