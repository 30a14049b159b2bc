"""Audit mode does not open an `--internal` network (user11, U11-F1), kernel tier.

Contract: `--internal` = "no traffic leaves the network"; audit mode = "policy drops
nothing" (no rule, egress denied, quarantined, pending). `--internal` is Docker's setting,
not policy: like spoofed frames, what leaves or enters an internal network is dropped in
both modes and counted and reported as a plain drop (reason `internal`), not as an audit
would-drop. Every test runs on each backend of the lab. The e2e twin:
tests/e2e/test_audit_internal_e2e.py."""
from __future__ import annotations

import pytest

from nsfixtures import OUTSIDE4, drain
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import parallel, probe_addr, probe_tcp

pytestmark = pytest.mark.kernel


def test_internal_network_in_audit_mode_keeps_everything_inside(lab):
    web, api, db = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api", db: "db"}, internal=True, mode="audit")
    events = lab.drop_events()
    assert probe_tcp(web, api.ip4, 8080) == "ok"                 # inside: as in enforce mode
    assert probe_tcp(web, db.ip4, 8080) == "ok"                  # no rule: audit lets it pass
    cells = [(web, OUTSIDE4, "tcp", 8080)]
    out = parallel(probe_addr, cells) + [probe_tcp(lab.outside, api.ip4, 8080),
                                         probe_tcp(lab.host_box, api.ip4, 8080)]
    assert out == ["timeout", "timeout", "timeout"], \
        f"internal network in audit mode: web->outside, outside->api, host->api = {out}"
    got = drain(events, 1.5)
    internal = [e for e in got if e.reason == "internal"]
    assert internal and not any(e.audit for e in internal), \
        f"'internal' drops must be reported as drops, not audit passes: {internal}"
    assert any(e.reason == "no-rule" and e.audit for e in got), f"no audit pass reported: {got}"
    assert lab.dropped("internal") >= 3 and lab.dropped("internal", audit=True) == 0


@pytest.mark.parametrize("state", ["quarantined", "pending"])
def test_an_inactive_member_of_an_internal_network_stays_inside_in_audit_mode(lab, state):
    """Audit mode passes a quarantined or pending container's traffic, but not past
    `--internal`: that holds before the container's state is looked at."""
    web, api, bad = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api", bad: "web"}, internal=True, mode="audit")
    lab.move(bad, None, quarantine="invalid label" if state == "quarantined" else None)
    events = lab.drop_events()
    assert probe_tcp(bad, api.ip4, 8080) == "ok"                 # inside: audit lets it pass
    out = parallel(probe_addr, [(bad, OUTSIDE4, "tcp", 8080)]) + [
        probe_tcp(lab.outside, bad.ip4, 8080), probe_tcp(lab.host_box, bad.ip4, 8080)]
    assert out == ["timeout", "timeout", "timeout"], \
        f"{state} member of an internal network in audit mode: ->outside, outside->, host-> = {out}"
    internal = [e for e in drain(events, 1.5) if e.reason == "internal"]
    assert internal and not any(e.audit for e in internal), internal
