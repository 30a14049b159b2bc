"""Per-rule counters of DNS-name rules with real packets, on every backend (U11-F3).

DNS rules of one segment with the same service and different names must each
count the flows their own answers opened; an address two of them taught counts
a flow for both, as overlapping CIDR rules do (test_counter_parity_kernel.py),
and once in the segment pair's total. Today both backends count by segment and
service: every such rule showed the sum of all of them (FINDINGS.md U11-F3). Now a
learned element carries the tag of the rules that taught it and the datapath counts
its flows under that tag (plugin/dns/store.py; ``DnsRig.counters`` spreads them to
the rules as the reconciler does).
"""
from __future__ import annotations

import pytest

from dns_lab import DNS_RULES, DnsRig, connect, resolve
from nsfixtures import lab  # noqa: F401  (lab is a fixture)
from plugin.observe.counting import OUTSIDE, per_pair, per_rule

pytestmark = pytest.mark.kernel

EXACT, WILD = "web->dns(api.example.test):tcp/443", "web->dns(*.wild.test):tcp/443"
API, ONLY_WILD = "10.238.0.5", "10.238.0.8"


def _counts(rig) -> tuple:
    """(per rule, web -> (outside) pair total), each [packets, bytes]."""
    counters = rig.counters()
    allowed, _dropped, _would = per_pair(rig.lab.policy, counters)
    return per_rule(rig.lab.policy, counters), allowed[("web", OUTSIDE)]


def test_dns_rules_of_one_service_count_their_own_flows_and_a_shared_address_for_both(lab):
    web, api = lab.add(2)
    lab.apply(f"{EXACT} {WILD} {DNS_RULES}", {web: "web", api: "api"}, egress="deny")
    rig = DnsRig(lab)
    rig.server.add("api.example.test", "A", 300, API)
    rig.server.add("a.wild.test", "A", 300, ONLY_WILD)
    rig.server.add("b.wild.test", "A", 300, API)     # the address of api.example.test too
    rig.start()
    try:
        assert resolve(web, "api.example.test") == [API]
        assert resolve(web, "a.wild.test") == [ONLY_WILD]
        assert [connect(web, a) for a in (API, API, ONLY_WILD)] == ["ok"] * 3
        rules, _pair = _counts(rig)
        syn = rules[WILD][1]           # one IPv4 SYN: each flow counts its first packet
        assert rules[WILD][0] == 1 and syn > 0, rules
        assert rules[EXACT] == [2, 2 * syn], rules
        assert resolve(web, "b.wild.test") == [API]  # now both rules taught API
        _rules0, pair0 = _counts(rig)
        assert connect(web, API) == "ok"
        rules, pair = _counts(rig)
        assert rules[EXACT] == [3, 3 * syn] and rules[WILD] == [2, 2 * syn], rules
        assert pair[0] - pair0[0] == 1, "the pair total counts the flow once"
    finally:
        rig.close()
