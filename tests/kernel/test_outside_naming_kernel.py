"""The host is "(outside)" in the metrics as in the log, on every backend (finding O3).

In audit mode with ``secnet.egress=deny`` a flow from a container to the
gateway (an address of the host) passes and is reported: the drop log names
its destination as an outside address, and the metrics' segment pair must
name it the same, ``(outside)`` (the backends count it under their own HOST
identity).
"""
from __future__ import annotations

import pytest

from nsfixtures import GATEWAY4, drain
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import probe_udp
from plugin.observe.counting import OUTSIDE, per_pair
from plugin.observe.droplog import end_view

pytestmark = pytest.mark.kernel


def test_a_flow_to_the_gateway_is_outside_in_log_and_metrics(lab):
    (web,) = lab.add(1)
    lab.apply("", {web: "web"}, egress="deny", mode="audit")
    events = lab.drop_events()
    assert probe_udp(web, GATEWAY4) == "ok"                       # audit: it passes
    seen = [e for e in drain(events, 1.0) if e.dst == GATEWAY4 and e.audit]
    assert seen, "no audit event for the flow to the gateway"
    assert end_view(seen[0].dst, None)["outside"]                 # the log: "(outside)"
    _allowed, _dropped, would = per_pair(lab.policy, lab.counters())
    pairs = {pair for pair, (packets, _b) in would.items() if packets}
    assert ("web", OUTSIDE) in pairs and not any("(host)" in p for p in pairs), pairs
