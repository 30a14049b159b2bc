"""observe.counting: backend counters (by policy-map key) named as rules and segment pairs."""
from __future__ import annotations

from plugin.enforce.fqdn import learned_counters
from plugin.enforce.backend import Counters
from plugin.observe.counting import OUTSIDE, per_pair, per_rule
from segmentation.options import parse_network_options
from segmentation.policymap import FQDN_TAG_KEY, compile_policy_map

RULES = ("web->dns(a.test):tcp/443 web->dns(*.b.test):tcp/443 web->dns(c.test):udp/53 "
         "web->api:tcp/80")


def _policy():
    options = parse_network_options({"secnet.allow": RULES})
    return compile_policy_map(options, {"web": 256, "api": 257})


def test_dns_rules_count_the_flows_of_their_tags_and_from_their_segment_to_the_outside():
    """The datapath counts a learned element's flows under its tag (the rules that taught
    it); learned_counters spreads a tag to each of its rules (U11-F3), once in the pair."""
    policy = _policy()
    a, b = [next(f for f in policy.fqdns if f.pattern == p) for p in ("a.test", "*.b.test")]
    tags = {1: frozenset({a.key[1:]}), 2: frozenset({a.key[1:], b.key[1:]})}
    counters = learned_counters(Counters(allowed={(FQDN_TAG_KEY, 1): (3, 180), (FQDN_TAG_KEY, 2): (1, 60),
                                                  (FQDN_TAG_KEY, 9): (7, 420)}), policy, tags)
    rules = per_rule(policy, counters)
    assert rules["web->dns(*.b.test):tcp/443"] == [1, 60], "only the flow to the address both taught"
    assert rules["web->dns(a.test):tcp/443"] == [4, 240]
    assert rules["web->dns(c.test):udp/53"] == [0, 0] and rules["web->api:tcp/80"] == [0, 0]
    allowed, _dropped, _would = per_pair(policy, counters)
    assert allowed[("web", OUTSIDE)] == [4, 240], "once, though two rules count a flow; tag 9 unknown"


def test_a_dns_counter_of_no_known_tag_counts_for_every_rule_of_its_service():
    """Tag 0 (an element written before tags, or past the tag bound): the segment and
    service are all the datapath knows, as before (FqdnEntry.service_key)."""
    policy = _policy()
    (key,) = {f.service_key for f in policy.fqdns if f.proto == "tcp"}
    counters = learned_counters(Counters(allowed={key: (3, 180)}), policy, {})
    rules = per_rule(policy, counters)
    assert rules["web->dns(a.test):tcp/443"] == rules["web->dns(*.b.test):tcp/443"] == [3, 180]
    allowed, _dropped, _would = per_pair(policy, counters)
    assert allowed[("web", OUTSIDE)] == [3, 180]


def test_the_host_is_named_outside_as_in_the_log():
    """A pair with the host (the HOST identity) is ``(outside)``, merged with the outside's,
    as `secnet log` names the host's addresses (finding O3)."""
    from segmentation.identities import HOST, OUTSIDE as OUTSIDE_ID   # noqa: PLC0415
    policy = _policy()
    counters = Counters(dropped={(256, HOST): (2, 120), (256, OUTSIDE_ID): (1, 60)},
                        would_drop={(HOST, 257): (4, 240)})
    _allowed, dropped, would = per_pair(policy, counters)
    assert dict(dropped) == {("web", OUTSIDE): [3, 180]}
    assert dict(would) == {(OUTSIDE, "api"): [4, 240]}


def test_a_pair_total_adds_the_once_counters():
    """A flow that two keys count (overlapping ranges) is in both rules' counts and
    once in its pair's total (Counters.allowed_once)."""
    options = parse_network_options({"secnet.allow": "web->api:tcp/5000-8080 web->api:tcp/8080-9999"})
    policy = compile_policy_map(options, {"web": 256, "api": 257})
    low, high = sorted(e.key for e in policy.entries if e.rule != "intra")
    counters = Counters(allowed={low: (3, 180), high: (5, 300)}, allowed_once={low: (3, 180), high: (2, 120)})
    rules = per_rule(policy, counters)
    assert rules["web->api:tcp/5000-8080"] == [3, 180] and rules["web->api:tcp/8080-9999"] == [5, 300]
    allowed, _dropped, _would = per_pair(policy, counters)
    assert allowed[("web", "api")] == [5, 300]
