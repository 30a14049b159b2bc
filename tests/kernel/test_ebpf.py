"""The eBPF backend in a real kernel: packets through its programs in throwaway namespaces."""
from __future__ import annotations

import pytest

from backend_lab import backend_lab  # noqa: F401  (fixture)
from nsfixtures import lab, probe, parallel  # noqa: F401

pytestmark = pytest.mark.kernel


def test_smoke(backend_lab):
    web, api = backend_lab.lab.add(2)
    backend_lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    cells = [(web, api, 4, "tcp", 8080), (web, api, 4, "tcp", 5432), (api, web, 4, "tcp", 8080),
             (web, api, 6, "tcp", 8080), (web, api, 4, "icmp", None)]
    assert parallel(probe, cells) == ["ok", "timeout", "timeout", "ok", "timeout"]
