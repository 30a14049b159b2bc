"""The host is "(outside)" in the metrics as in the log, on every backend (finding O3).

In audit mode with ``secnet.egress=deny`` a flow from a container to the
gateway (an address of the host) passes and is reported: the drop log names
its destination as an outside address, and the metrics' segment pair must
name it the same, ``(outside)`` (the backends count it under their own HOST
identity).
"""
from __future__ import annotations

import pytest

from nsfixtures import BRIDGE, GATEWAY4, OUTSIDE4, drain
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import PROBE_TIMEOUT, UDP_PORT, parallel, probe_udp, sh
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


def test_clients_masqueraded_to_the_gateway_are_reported_each(lab):
    """Two clients of another network that its masquerade (Docker's ``-s SUBNET ! -o
    BRIDGE``) makes the gateway, dropped at once: one report each, by its own address,
    on both backends. eBPF keyed its once-a-second limit by the masqueraded source and
    reported one of the two (seen in e2e test_other_networks_dropped_without_rules)."""
    (web,) = lab.add(1)
    lab.apply("", {web: "web"})
    second = "10.237.0.3"
    sh("ip", "-n", lab.outside.ns, "addr", "add", f"{second}/24", "dev", "eth0")
    lab.nft("add table ip othernet; add chain ip othernet post { type nat hook postrouting priority srcnat; }; "
            f"add rule ip othernet post ip saddr 10.237.0.0/24 oifname {BRIDGE} masquerade")
    events = lab.drop_events()
    cells = [(lab.outside, web.ip4, UDP_PORT, PROBE_TIMEOUT, src) for src in (OUTSIDE4, second)]
    assert parallel(probe_udp, cells) == ["timeout", "timeout"]
    got = {(e.reason, e.src, e.dst, e.port) for e in drain(events, 1.0)}
    assert got == {("no-rule", OUTSIDE4, web.ip4, UDP_PORT), ("no-rule", second, web.ip4, UDP_PORT)}, got
    assert probe_udp(lab.host_box, web.ip4) == "ok"     # the control: the host gets in
