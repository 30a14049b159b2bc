"""Both backends count a flow for the same rules (user7 finding U7-F2), with real
packets: overlapping CIDR rules, egress and ingress, IPv4 and IPv6, and the
east-west rules of U7-O1, and a flow whose first packet was sent twice.

The expected attribution is spelled out from the contract's counting (a flow
counts for every CIDR rule of its protocol that allows it; for east-west
rules one port, a port range and every port are counted as nftables'
sets are looked up) -- the same numbers on each backend.
"""
from __future__ import annotations

import threading

import pytest

from nsfixtures import NET_ID, lab  # noqa: F401  (lab is a fixture)
from packets import parallel, probe_addr, probe_tcp, sh
from plugin.observe.counting import OUTSIDE, per_pair, per_rule
from segmentation.policymap import CidrEntry, PolicyEntry

pytestmark = pytest.mark.kernel

WIDE = {4: "10.237.0.0/24", 6: "fd00:237::/64"}
HOST = {4: "10.237.0.2/32", 6: "fd00:237::2/128"}


def _cidr(direction: str, ident: int, fam: int, cidr: str, lo: int, hi: int) -> tuple:
    return CidrEntry(direction, ident, fam, cidr, "tcp", lo, hi, "").key


def _text(fam: int, cidr: str) -> str:
    return cidr if fam == 4 else f"[{cidr}]"


def test_overlapping_cidr_rules_count_a_flow_for_each(lab):
    web, api = lab.add(2)
    rules = [f"web->{_text(f, WIDE[f])}:tcp/8080 web->{_text(f, HOST[f])}:tcp "
             f"{_text(f, WIDE[f])}->api:tcp/8080 {_text(f, HOST[f])}->api:tcp" for f in (4, 6)]
    lab.apply(" ".join(rules), {web: "web", api: "api"}, intra="deny", egress="deny")
    ident = lab.allocator.identities(NET_ID)
    cells = [(web, lab.outside.ip(f), "tcp", 8080) for f in (4, 6)]
    cells += [(lab.outside, api.ip(f), "tcp", 8080) for f in (4, 6)]
    assert parallel(probe_addr, cells) == ["ok"] * 4
    counters = lab.counters()
    for direction, seg in (("egress", "web"), ("ingress", "api")):
        for fam in (4, 6):
            wide = counters.allowed.get(_cidr(direction, ident[seg], fam, WIDE[fam], 8080, 8080))
            narrow = counters.allowed.get(_cidr(direction, ident[seg], fam, HOST[fam], 0, 65535))
            assert wide and wide[0] >= 1, (direction, fam, counters.allowed)
            assert wide == narrow, (direction, fam, "the flow counts for both rules")


def test_a_port_only_the_host_rule_allows_counts_for_it_alone(lab):
    web, api = lab.add(2)
    lab.apply(f"web->{WIDE[4]}:tcp/8080 web->{HOST[4]}:tcp", {web: "web", api: "api"}, intra="deny",
              egress="deny")
    ident = lab.allocator.identities(NET_ID)["web"]
    assert probe_tcp(web, lab.outside.ip4, 5432) == "ok"
    counters = lab.counters()
    assert counters.allowed.get(_cidr("egress", ident, 4, WIDE[4], 8080, 8080), (0, 0))[0] == 0
    assert counters.allowed[_cidr("egress", ident, 4, HOST[4], 0, 65535)][0] >= 1


def test_one_port_rule_counts_before_the_whole_protocol_rule(lab):
    """U7-O1's rules: web->api:tcp/8080 and web->*:tcp; explain names the first (unit tier)."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080 web->*:tcp", {web: "web", api: "api"}, intra="deny")
    ident = lab.allocator.identities(NET_ID)
    w, a = ident["web"], ident["api"]
    assert parallel(probe_addr, [(web, api.ip(f), "tcp", p) for f in (4, 6) for p in (8080, 5432)]) == ["ok"] * 4
    counters = lab.counters()
    one = counters.allowed[PolicyEntry(w, a, "tcp", 8080, 8080, "").key]
    whole = counters.allowed[PolicyEntry(w, a, "tcp", 0, 65535, "").key]
    assert one[0] >= 2 and whole[0] >= 2
    assert one[1] == whole[1], "the 8080 flows count for the port rule, the 5432 ones for the other"


def test_a_pair_total_adds_a_flow_that_two_rules_count_once(lab):
    """A flow two rules count (a host inside a wider CIDR, overlapping port ranges) is
    in each rule's counter and once in its pair's total (show's and metrics' pairs)."""
    web, api = lab.add(2)
    lab.apply(f"web->{WIDE[4]}:tcp/8080 web->{HOST[4]}:tcp web->api:tcp/5000-8080 web->api:tcp/8080-9999",
              {web: "web", api: "api"}, intra="deny", egress="deny")
    cells = [(web, lab.outside.ip4, "tcp", 8080), (web, api.ip4, "tcp", 8080)]
    assert parallel(probe_addr, cells) == ["ok"] * 2
    counters = lab.counters()
    rules = per_rule(lab.policy, counters)
    allowed, _dropped, _would = per_pair(lab.policy, counters)
    outside = rules[f"web->{WIDE[4]}:tcp/8080"]
    east_west = rules["web->api:tcp/5000-8080"]
    assert outside[0] >= 1 and outside == rules[f"web->{HOST[4]}:tcp"], rules
    assert east_west[0] >= 1 and east_west == rules["web->api:tcp/8080-9999"], rules
    assert allowed[("web", OUTSIDE)] == outside, "the pair total counts the flow once"
    assert allowed[("web", "api")] == east_west, "the pair total counts the flow once"


def test_a_flow_counts_for_the_most_specific_kind_of_rule_only(lab):
    """Rules of different kinds that allow one flow: a port rule next to intra (the
    segment's implicit `any`), a tcp CIDR rule next to an `any` one: the flow counts
    for the port rule, the tcp rule, on both backends (docs/visibility.md)."""
    web, web2, api = lab.add(3)
    lab.apply(f"web->web:tcp/8080 web->{HOST[4]}:tcp web->{WIDE[4]}", {web: "web", web2: "web", api: "api"},
              egress="deny")
    cells = [(web, web2.ip4, "tcp", 8080), (web, lab.outside.ip4, "tcp", 8080)]
    assert parallel(probe_addr, cells) == ["ok"] * 2
    counters = lab.counters()
    rules = per_rule(lab.policy, counters)
    allowed, _dropped, _would = per_pair(lab.policy, counters)
    assert rules["web->web:tcp/8080"][0] >= 1 and rules["intra"] == [0, 0], rules
    assert rules[f"web->{HOST[4]}:tcp"][0] >= 1 and rules[f"web->{WIDE[4]}"] == [0, 0], rules
    assert allowed[("web", "web")] == rules["web->web:tcp/8080"]
    assert allowed[("web", OUTSIDE)] == rules[f"web->{HOST[4]}:tcp"]


def _drop_syns_for_a_while(box, port: int, seconds: float) -> threading.Timer:
    """``box`` ignores SYNs to ``port`` for ``seconds`` (the client retransmits its SYN),
    as a fresh container that misses the host's first neighbour solicitation does."""
    sh("ip", "netns", "exec", box.ns, "nft", "add table inet lossy; add chain inet lossy in "
       "{ type filter hook input priority 0; }; "
       f"add rule inet lossy in tcp dport {port} tcp flags syn drop")
    timer = threading.Timer(seconds, sh, ("ip", "netns", "exec", box.ns, "nft", "delete table inet lossy"))
    timer.start()
    return timer


@pytest.mark.parametrize("fam", [4, 6])
def test_a_retransmitted_syn_counts_once(lab, fam):
    """user7: nftables counted one packet more than eBPF on the first IPv6 flow to a
    container in the network's other subnet: its SYN was retransmitted before any
    reply, and nftables judged (and counted) every packet of an unanswered flow."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    ident = lab.allocator.identities(NET_ID)
    timer = _drop_syns_for_a_while(api, 8080, 1.5)
    try:
        assert probe_tcp(web, api.ip(fam), 8080, timeout=8) == "ok"
    finally:
        timer.join()
    packets, octets = lab.counters().allowed[PolicyEntry(ident["web"], ident["api"], "tcp", 8080, 8080, "").key]
    assert packets == 1, f"{packets} packets counted for one flow (its SYN was sent more than once)"


def test_a_rule_removed_and_added_again_counts_from_zero_and_the_others_keep_theirs(lab):
    # U28-F1: eBPF kept a removed rule's counter and gave it back when the rule returned
    web, api = lab.add(2)
    rules = "web->api:tcp/8080 web->api:tcp/9990-9999 web->api:tcp/5432"
    lab.apply(rules, {web: "web", api: "api"}, intra="deny")
    ident = lab.allocator.identities(NET_ID)
    w, a = ident["web"], ident["api"]
    keys = {port: PolicyEntry(w, a, "tcp", lo, hi, "").key
            for port, (lo, hi) in {8080: (8080, 8080), 9999: (9990, 9999), 5432: (5432, 5432)}.items()}

    def allowed() -> dict:
        counted = lab.counters().allowed
        return {port: counted.get(key, (0, 0))[0] for port, key in keys.items()}
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 8080, 9999, 5432)] == ["ok"] * 4
    before = allowed()
    assert before[8080] >= 2 and before[9999] >= 1 and before[5432] >= 1, before
    lab.update("web->api:tcp/5432")                                  # two removed
    assert probe_tcp(web, api.ip4, 8080) == "timeout"
    lab.update(rules)                                                # and back
    again = allowed()
    assert again == {8080: 0, 9999: 0, 5432: before[5432]}, (before, again)
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert allowed()[8080] >= 1


def test_a_cidr_rule_removed_and_added_again_counts_from_zero(lab):
    # U28-F1, for CIDR rules: an egress rule's counter, and an ingress one's that stays
    web, api = lab.add(2)
    out, keep = f"web->{WIDE[4]}:tcp/8080", f"{WIDE[4]}->api:tcp/8080"
    lab.apply(f"{out} {keep}", {web: "web", api: "api"}, intra="deny", egress="deny")
    ident = lab.allocator.identities(NET_ID)
    egress = _cidr("egress", ident["web"], 4, WIDE[4], 8080, 8080)
    ingress = _cidr("ingress", ident["api"], 4, WIDE[4], 8080, 8080)

    def allowed(key) -> int:
        return lab.counters().allowed.get(key, (0, 0))[0]
    assert parallel(probe_addr, [(web, lab.outside.ip4, "tcp", 8080), (lab.outside, api.ip4, "tcp", 8080)]) \
        == ["ok", "ok"]
    kept = allowed(ingress)
    assert allowed(egress) >= 1 and kept >= 1
    lab.update(keep)
    assert probe_addr(web, lab.outside.ip4, "tcp", 8080) == "timeout"
    lab.update(f"{out} {keep}")
    assert (allowed(egress), allowed(ingress)) == (0, kept)
    assert probe_addr(web, lab.outside.ip4, "tcp", 8080) == "ok"
    assert allowed(egress) >= 1
