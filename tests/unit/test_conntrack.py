"""Which conntrack entries a change leaves stale (pure: no kernel).

Entries are written as the kernel holds them: the original tuple as the
initiator sent it, the reply tuple as the answer comes back (after NAT).
"""
import pytest

from plugin.kernel.conntrack import GONE, Entry, Flows, Holder, Tuple, allowed_by, claimed, holders, judge, stale
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import parse_network_options

HOST4, HOST6, GW4 = "192.0.2.1", "2001:db8::1", "10.0.0.1"
WEB4, API4, WEB6, API6 = "10.0.0.2", "10.0.0.3", "fd00::2", "fd00::3"


def is_host(addr):
    return addr in (HOST4, HOST6, GW4, "127.0.0.1", "::1")


class P:  # a port as the reconciler has it
    def __init__(self, segment, ipv4, ipv6=None, quarantine=None, published=()):
        self.segment, self.ipv4, self.ipv6 = segment, ipv4, ipv6
        self.quarantine, self.published = quarantine, published


PUB = (("tcp", "", 18080, 8080), ("udp", "", 38417, 5353))
HELD = holders([P("web", WEB4, WEB6), P("api", API4, API6, published=PUB)])


def allowed(rules: str, **opts):
    options = parse_network_options({"secnet.allow": rules, **opts})
    return allowed_by(compile_policy(options, [Member("a", "web", WEB4, WEB6), Member("b", "api", API4, API6)]))


def entry(proto, src, dst, sport, dport, rsrc=None, rdst=None, rsport=None, nat=0):
    """An entry; ``rsrc``/``rdst``/``rsport`` give the reply tuple after NAT."""
    fam = 6 if ":" in src else 4
    reply = Tuple(proto, rsrc or dst, rdst or src, rsport or dport, sport)
    return Entry(fam, Tuple(proto, src, dst, sport, dport), reply, nat)


def published(proto, src, host_port, target, cport, masq=None):
    """A flow from ``src`` to a published port (DNAT; masqueraded to ``masq`` when given)."""
    return entry(proto, src, HOST4 if ":" not in target else HOST6, 40000, host_port,
                 rsrc=target, rdst=masq or src, rsport=cport, nat=1 << 5)


def verdict(e, rules="", **opts):
    return judge(e, HELD, allowed(rules, **opts), is_host)


def test_east_west_flows_follow_the_rules_in_both_families():
    for src, dst in ((WEB4, API4), (WEB6, API6)):
        assert verdict(entry("tcp", src, dst, 4000, 8080), "web->api:tcp/8080") is None
        assert verdict(entry("tcp", src, dst, 4000, 9090), "web->api:tcp/8080") == "denied"
        assert verdict(entry("udp", dst, src, 4000, 53), "web->api:tcp/8080") == "denied"


def test_a_published_flow_is_judged_by_the_container_in_its_reply_tuple():
    e = published("tcp", "127.0.0.1", 18080, API4, 8080, masq=GW4)
    assert verdict(e) is None                                      # as on Docker's bridge
    assert verdict(e, "10.0.0.0/8->api:tcp/8080") == "denied"       # a CIDR rule that is not the host
    assert verdict(e, "127.0.0.0/8->api:tcp/8080") is None          # the rule names the host's source
    assert verdict(e, "127.0.0.0/8->api:tcp/9999") == "denied"      # judged on the container port


def test_a_published_flow_from_outside_follows_cidr_source_rules():
    e = published("udp", "198.51.100.7", 38417, API4, 5353)
    assert verdict(e) is None
    assert verdict(e, "198.51.100.0/24->api:udp/5353") is None
    assert verdict(e, "203.0.113.0/24->api:udp/5353") == "denied"


def test_ipv6_published_flow():
    e = published("tcp", "2001:db8::9", 18080, API6, 8080)
    assert verdict(e, "[2001:db8::/32]->api:tcp/8080") is None
    assert verdict(e, "[2001:db9::/32]->api:tcp/8080") == "denied"


def test_a_hairpin_is_judged_as_east_west_on_the_container_port():
    """A member reaching a published port of its own network (U12-F3): an east-west
    rule to the target's container port keeps it, nothing else does."""
    for src, target, masq in ((WEB4, API4, GW4), (WEB6, API6, "fd00::1")):
        e = published("tcp", src, 18080, target, 8080, masq=masq)
        assert verdict(e, "web->api:tcp/8080") is None
        assert verdict(e) == "denied"                                 # no rule: the port opens nothing
        assert verdict(e, "web->api:tcp/18080") == "denied"           # the host port is not the service
        assert verdict(e, "10.0.0.0/8->api:tcp/8080, [fd00::/64]->api:tcp/8080") == "denied"
    same = published("tcp", API4, 18080, API4, 8080, masq=GW4)      # its own port: within its segment
    assert verdict(same) is None
    assert verdict(same, **{"secnet.intra": "deny"}) == "denied"


def test_a_flow_to_a_port_no_longer_published_goes():
    held = holders([P("web", WEB4), P("api", API4, published=())])
    e = published("tcp", "127.0.0.1", 18080, API4, 8080, masq=GW4)
    assert judge(e, held, allowed(""), is_host) == "unpublished"


def test_removed_quarantined_and_pending_ends_pass_nothing():
    e = published("udp", "127.0.0.1", 38417, API4, 5353, masq=GW4)
    assert judge(e, {API4: GONE}, allowed(""), is_host) == "gone"
    assert judge(entry("tcp", WEB4, API4, 1, 2), {WEB4: GONE}, allowed(""), is_host) == "gone"
    q = holders([P("web", WEB4), P(None, API4, quarantine="bad label")])
    assert judge(entry("tcp", WEB4, API4, 1, 8080), q, allowed("web->api:tcp/8080"), is_host) == "quarantined"
    p = holders([P("web", WEB4), P(None, API4)])
    assert judge(entry("udp", API4, "198.51.100.7", 1, 53), p, allowed(""), is_host) == "pending"


def test_egress_is_judged_by_the_real_destination_of_a_masqueraded_flow():
    e = entry("tcp", WEB4, "198.51.100.7", 4000, 443, rdst=HOST4, nat=1 << 4)
    assert verdict(e, **{"secnet.egress": "allow"}) is None
    assert verdict(e, **{"secnet.egress": "deny"}) == "denied"
    assert verdict(e, "web->198.51.100.0/24:tcp/443", **{"secnet.egress": "deny"}) is None


def test_flows_of_others_and_unjudged_protocols_are_left_alone():
    assert verdict(entry("tcp", "172.17.0.2", "172.17.0.3", 1, 2)) is None
    assert verdict(entry("proto-47", WEB4, API4, None, None), "web->api:tcp/80") is None


def test_stale_only_looks_at_entries_naming_the_addresses():
    es = [entry("tcp", WEB4, API4, 1, 9090), entry("tcp", WEB6, API6, 1, 9090)]
    got = stale(es, HELD, allowed(""), only={WEB6}, is_host=is_host)
    assert [e.family for e, _ in got] == [6]


def test_claimed_entries_are_those_that_do_not_reach_the_new_holder():
    to_host = entry("udp", "127.0.0.1", "127.0.0.1", 40000, 38417)       # went to the host (unpublished)
    to_old = published("udp", "127.0.0.1", 38417, "10.0.0.9", 5353, masq=GW4)
    to_new = published("udp", "127.0.0.1", 38417, API4, 5353, masq=GW4)
    other_port = entry("udp", "127.0.0.1", "127.0.0.1", 40000, 38418)
    remote = entry("udp", WEB4, "198.51.100.7", 40000, 38417)              # not a host address
    es = [to_host, to_old, to_new, other_port, remote]
    assert claimed(es, "udp", "", 38417, API4, is_host) == [to_host, to_old]
    assert claimed(es, "tcp", "", 38417, API4, is_host) == []
    assert claimed(es, "udp", "192.0.2.1", 38417, API4, is_host) == [to_old]


class FakeKernel:
    def __init__(self, entries):
        self.have, self.deleted = list(entries), []

    def entries(self, addresses=None):
        return list(self.have)

    def delete(self, entries):
        self.deleted += list(entries)
        return len(entries)


def test_forget_deletes_entries_naming_the_address_in_either_tuple():
    dnat = published("udp", "127.0.0.1", 38417, API4, 5353, masq=GW4)
    ew = entry("tcp", WEB4, API4, 1, 8080)
    mine = entry("tcp", WEB4, "10.0.0.7", 1, 8080)
    kernel = FakeKernel([dnat, ew, mine])
    assert Flows(kernel).forget([API4 + "/24", None]) == 2
    assert kernel.deleted == [dnat, ew]


def test_holders_know_a_ports_own_link_local_address():
    """U10-F4: a flow between members' link-local addresses is judged (and ended) too."""
    web = P("web", WEB4, WEB6)
    web.mac = "02:42:0a:00:00:02"
    h = holders([web])
    assert h["fe80::42:aff:fe00:2"] == h[WEB4] == Holder(("segment", "web"))
    ll = entry("tcp", "fe80::42:aff:fe00:2", "fe80::42:aff:fe00:3", 40000, 8080)
    api = P("api", API4)
    api.mac = "02:42:0a:00:00:03"
    held = holders([web, api])
    assert judge(ll, held, allowed(""), is_host) == "denied"
    assert judge(ll, held, allowed("web->api:tcp/8080"), is_host) is None


def test_holders_read_ports_published_and_states():
    h = holders([P("web", WEB4 + "/24", WEB6, published=PUB)], gone=["10.0.0.9"])
    assert h[WEB4] == Holder(("segment", "web"), frozenset({("tcp", 18080, 8080), ("udp", 38417, 5353)}))
    assert h[WEB6].end == ("segment", "web") and h["10.0.0.9"] is GONE


@pytest.mark.parametrize("rules", ["", "web->api:tcp/8080"])
def test_allowed_by_fails_closed_on_unknown_segments(rules):
    assert allowed(rules)(("segment", "nope"), ("segment", "api"), "tcp", 80) is False


# --- flows a learned DNS address admitted --------------------------------------------
OUT4 = "198.51.100.7"


def test_a_learned_flow_goes_on_after_expiry_while_its_dns_rule_names_its_service():
    from plugin.kernel.marks import LEARNED_FLOW_MARK
    from plugin.kernel.conntrack import dns_rule_by
    members = [Member("a", "web", WEB4, WEB6), Member("b", "api", API4, API6)]

    def judged(e, rules):
        compiled = compile_policy(parse_network_options({"secnet.allow": rules, "secnet.egress": "deny"}),
                                  members)
        return judge(e, HELD, allowed_by(compiled), is_host, dns_rule_by(compiled))

    flow = entry("tcp", WEB4, OUT4, 40000, 443)
    learned = Entry(4, flow.orig, flow.reply, 0, LEARNED_FLOW_MARK | 1)
    assert learned.learned and not flow.learned
    rule = "web->dns(api.example.test):tcp/443"
    assert judged(learned, rule) is None                           # expired: nothing learned now
    assert judged(flow, rule) == "denied"                          # not admitted by an answer
    assert judged(learned, "web->dns(api.example.test):tcp/80") == "denied"   # other service
    assert judged(learned, "api->dns(api.example.test):tcp/443") == "denied"  # other segment
    assert judged(learned, "web->api:tcp/1") == "denied"           # the rule is gone
    back = entry("tcp", OUT4, WEB4, 443, 40000)                    # never from outside in
    assert judged(Entry(4, back.orig, back.reply, 0, LEARNED_FLOW_MARK), rule) == "denied"
