"""Rule and drop counters go on across a daemon restart, on every backend (finding O1).

A restart is a new backend object (a new daemon process) whose first act is a
whole write of each network from the saved state (the reconciler's first
pass). The eBPF backend adopts its pinned maps, counters included; the
nftables backend adopts its tables when they are intact (no rule or element
drifted) and rewrites them otherwise.
"""
from __future__ import annotations

import pytest

from nsfixtures import BACKENDS, InNamespace, only
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import probe_tcp
from plugin.observe.counting import per_rule

pytestmark = pytest.mark.kernel
RULE = "web->api:tcp/8080"


def _restart(lab) -> None:
    """The daemon stops and a new one writes the network from its state."""
    lab.backend.shutdown()
    lab.backend = InNamespace(lab.host, lambda: BACKENDS[lab.backend_name](lab.pin_root))
    lab.repair()


def _counts(lab) -> tuple:
    """(packets the rule allowed, packets dropped for no rule)."""
    counters = lab.counters()
    return per_rule(lab.policy, counters)[RULE][0], counters.reasons.get("no-rule", (0, 0))[0]


def test_counters_go_on_across_a_restart(lab):
    web, api = lab.add(2)
    lab.apply(RULE, {web: "web", api: "api"})
    assert [probe_tcp(web, api.ip4, 8080) for _ in range(2)] == ["ok", "ok"]
    assert probe_tcp(api, web.ip4, 8080) == "timeout"
    allowed, dropped = _counts(lab)
    assert allowed >= 2 and dropped >= 1
    _restart(lab)
    assert _counts(lab) == (allowed, dropped)           # nothing lost, nothing new yet
    assert probe_tcp(web, api.ip4, 8080) == "ok"       # and they go on counting
    assert _counts(lab)[0] > allowed
    assert lab.drift() == []


@only("nftables")
def test_drifted_tables_are_rewritten_not_adopted(lab):
    web, api = lab.add(2)
    lab.apply(RULE, {web: "web", api: "api"})
    lab.nft("flush", "chain", "bridge", lab.table, "spoofing")
    lab.backend.shutdown()
    lab.backend = InNamespace(lab.host, lambda: BACKENDS[lab.backend_name](lab.pin_root))
    assert lab.drift() != []
    lab.repair()
    assert lab.drift() == []
