"""Flooded copies at a quarantined or pending port are dropped silently, on every backend
(finding F3: `secnet log` showed ARP between two other containers as "quarantined").

The bridge floods broadcasts, multicasts and unicast frames for MACs it has not
learned to every port. At a port whose container is quarantined or pending,
only what is meant for that container is judged and logged (a frame to its
MAC, an ARP request or neighbour solicitation for one of its addresses); a
copy meant for others is dropped without a word (audit mode: passed without
one). The container's own frames are logged as before.
"""
from __future__ import annotations

import pytest

from nsfixtures import drain
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import probe_tcp

pytestmark = pytest.mark.kernel
INACTIVE = ("quarantined", "pending")


def _resolve_again(*boxes) -> None:
    for c in boxes:
        c.ip_cmd("neigh", "flush", "all")
        c.ip_cmd("-6", "neigh", "flush", "all")


@pytest.mark.parametrize("state", INACTIVE)
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_copies_for_others_are_not_logged_at_an_inactive_port(lab, state, mode):
    web, api, bad = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, mode=mode,
              extra_ports=[lab.port(bad, quarantine="empty label" if state == "quarantined" else None)])
    events = lab.drop_events()
    _resolve_again(web, api)
    assert probe_tcp(web, api.ip4, 8080) == "ok"         # ARP broadcast, flooded to bad's port too
    assert probe_tcp(web, api.ip6, 8080) == "ok"         # neighbour solicitation (multicast)
    others = {web.ip4, web.ip6, api.ip4, api.ip6}
    noise = [e for e in drain(events, 1.0) if e.reason in INACTIVE and e.dst in others]
    assert noise == [], f"flooded copies logged as {state}: {noise[:3]}"
    # what is meant for the inactive container is still judged and reported
    probe_tcp(web, bad.ip4, 8080)
    meant = [e for e in drain(events, 1.0) if e.reason == state and e.dst == bad.ip4]
    assert meant, f"nothing logged for web -> {state} container"
