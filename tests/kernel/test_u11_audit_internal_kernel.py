"""Audit mode must not open an `--internal` network (user11, U11-F1), kernel tier.

Contract: `--internal` = "no traffic leaves the network"; audit mode = "policy drops
nothing" (no rule, egress denied, quarantined, pending). In the lab, an internal network
in audit mode lets a member reach the outside namespace and the outside reach a member,
on both backends (the drop reason `internal` is auditable). The e2e twin:
tests/e2e/test_u11_audit_internal_e2e.py."""
from __future__ import annotations

import pytest

from nsfixtures import OUTSIDE4
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import parallel, probe_addr, probe_tcp


@pytest.mark.xfail(strict=True, reason="U11-F1: audit mode lifts --internal (reason 'internal' is auditable)")
def test_internal_network_in_audit_mode_keeps_everything_inside(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, internal=True, mode="audit")
    assert probe_tcp(web, api.ip4, 8080) == "ok"                 # inside: as in enforce mode
    cells = [(web, OUTSIDE4, "tcp", 8080)]
    out = parallel(probe_addr, cells) + [probe_tcp(lab.outside, api.ip4, 8080),
                                         probe_tcp(lab.host_box, api.ip4, 8080)]
    assert out == ["timeout", "timeout", "timeout"], \
        f"internal network in audit mode: web->outside, outside->api, host->api = {out}"
