"""DNS-name destinations in the pure model: grammar, matching, compilers, verdict."""

import pytest
from hypothesis import given, strategies as st

from segmentation import fqdn
from segmentation.compiler import compile_policy, verdict
from segmentation.errors import OptionError, RuleError
from segmentation.model import Member
from segmentation.options import NetworkOptions, parse_network_options
from segmentation.policymap import FqdnEntry, PolicyMap, compile_policy_map
from segmentation.reference import reference_allowed
from segmentation.rules import Endpoint, Rule, Service, parse_rule, parse_rules

IDS = {"default": 256, "web": 257, "api": 258}


# --- grammar -----------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("web->dns(api.example.com):tcp/443", "web->dns(api.example.com):tcp/443"),
    ("web->DNS(API.Example.COM.):TCP/443", "web->dns(api.example.com):tcp/443"),
    ("*->dns(*.example.org)", "*->dns(*.example.org)"),
    ("web -> dns(xn--bcher-kva.de):udp/53-54", "web->dns(xn--bcher-kva.de):udp/53-54"),
    ("web->dns(_acme.example.com):icmp", "web->dns(_acme.example.com):icmp"),
    ("web->dns(localhost)", "web->dns(localhost)"),
])
def test_dns_destinations_parse_to_canonical_text(text, canonical):
    rule = parse_rule(text)
    assert rule.dst.kind == "fqdn"
    assert rule.text() == canonical
    assert parse_rule(rule.text()) == rule


@pytest.mark.parametrize("text, reason", [
    ("dns(a.com)->web", "only allowed as a destination"),
    ("10.0.0.0/8->dns(a.com):tcp/443", "both outside"),
    ("web->dns()", "the DNS name is empty"),
    ("web->dns(a.com", "without a closing ')'"),
    ("web->dns(a.com)x:tcp", "unexpected 'x:tcp' after"),
    ("web->dns(*)", "'*' is only allowed as the whole first label"),
    ("web->dns(a.*.com)", "'*' is only allowed as the whole first label"),
    ("web->dns(*foo.com)", "'*' is only allowed as the whole first label"),
    ("web->dns(foo.*)", "'*' is only allowed as the whole first label"),
    ("web->dns(a..com)", "empty label"),
    ("web->dns(.a.com)", "empty label"),
    ("web->dns(-a.com)", "starts or ends with '-'"),
    ("web->dns(a-.com)", "starts or ends with '-'"),
    ("web->dns(a!b.com)", "character other than"),
    ("web->dns(" + "a" * 64 + ".com)", "64 characters long (at most 63)"),
    ("web->dns(" + ".".join(["a" * 60] * 5) + ")", "at most 253"),
    ("web->dns(10.1.2.3)", "it is an IP address"),
    ("web->dns([::1])", "it is an IP address"),
    ("web->dns(bücher.de)", "punycode (xn--bcher-kva.de)"),
    ("web->dns(a.com):icmp/3", "ports are only allowed with tcp or udp"),
])
def test_bad_dns_rules_are_one_line_errors_naming_the_rule(text, reason):
    with pytest.raises(RuleError) as err:
        parse_rule(text)
    message = str(err.value)
    assert reason in message and "\n" not in message
    assert message.startswith("invalid rule '")


def test_253_characters_is_the_longest_name():
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert parse_rule(f"web->dns({name})").dst.value == name


def test_endpoint_refuses_fqdn_source_and_normalises():
    assert Endpoint("fqdn", "A.B.").value == "a.b"
    with pytest.raises(ValueError):
        Endpoint("fqdn", "a..b")
    with pytest.raises(RuleError):
        Rule(Endpoint("fqdn", "a.b"), Endpoint("segment", "web"))


def test_internal_network_refuses_dns_rules():
    with pytest.raises(OptionError, match="names a DNS name, but an internal network"):
        parse_network_options({"secnet.allow": "web->dns(a.com)"}, internal=True)


def test_options_round_trip_dns_rules():
    options = parse_network_options({"secnet.allow": "web->dns(*.Example.org):tcp/443 web->api"})
    assert NetworkOptions.from_dict(options.to_dict()) == options


@given(st.lists(st.sampled_from(["a", "b0", "x-y", "_s", "xn--p1ai", "c"]), min_size=1, max_size=5),
       st.booleans(), st.sampled_from(["", ":tcp/443", ":udp/1-2", ":icmp", ":tcp"]))
def test_dns_rules_round_trip(labels, wildcard, service):
    name = ("*." if wildcard else "") + ".".join(labels)
    rule = parse_rule(f"web->dns({name}){service}")
    assert parse_rule(rule.text()) == rule
    assert parse_rules(rule.text() + "," + rule.text()) == (rule,)


# --- matching and answers ------------------------------------------------------

@pytest.mark.parametrize("pattern, name, expected", [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.Example.Com.", True),
    ("api.example.com", "x.api.example.com", False),
    ("*.example.org", "a.example.org", True),
    ("*.example.org", "a.b.EXAMPLE.org.", True),
    ("*.example.org", "example.org", False),
    ("*.example.org", "badexample.org", False),
    ("*.example.org", "a.example.org.evil", False),
])
def test_matching(pattern, name, expected):
    assert fqdn.matches(pattern, name) is expected


def test_follow_a_cname_chain_takes_the_smallest_ttl():
    cnames = {"www.example.com": ("edge.cdn.net", 300), "edge.cdn.net": ("e1.cdn.net", 30)}
    addrs = {"e1.cdn.net": [("10.210.0.5", 600), ("fd00:210::5", 20)], "other.net": [("10.210.0.9", 9)]}
    found = fqdn.follow("WWW.Example.com.", cnames, addrs)
    assert [(a.address, a.family, a.ttl) for a in found] == [("10.210.0.5", 4, 30), ("fd00:210::5", 6, 20)]
    assert found[0].names == ("www.example.com", "edge.cdn.net", "e1.cdn.net")
    assert found[0].name == "www.example.com"
    assert fqdn.learns("www.example.com", found[0]) and fqdn.learns("*.cdn.net", found[0])
    assert not fqdn.learns("*.example.org", found[0])


def test_follow_ignores_records_off_the_chain_and_stops_loops():
    assert fqdn.follow("a.com", {}, {"b.com": [("10.210.0.1", 5)]}) == []
    loop = {"a.com": ("b.com", 5), "b.com": ("a.com", 5)}
    assert fqdn.follow("a.com", loop, {"a.com": [("10.210.0.1", 50)]}) == []
    long_chain = {f"n{i}.com": (f"n{i + 1}.com", 5) for i in range(40)}
    assert fqdn.follow("n0.com", long_chain, {"n40.com": [("10.210.0.1", 5)]}) == []


# --- compilers and verdict -------------------------------------------------------

def options(rules, **kw):
    return NetworkOptions(rules=parse_rules(rules), **kw)


def test_policy_map_has_fqdn_entries_per_source_identity():
    pm = compile_policy_map(options("*->dns(*.example.org):tcp/443 web->dns(a.com)"), IDS)
    assert pm.fqdns == {FqdnEntry(i, "*.example.org", "tcp", 443, 443, "*->dns(*.example.org):tcp/443")
                        for i in IDS.values()} | {FqdnEntry(257, "a.com", "any", 0, 0, "web->dns(a.com)")}
    assert not pm.entries - {e for e in pm.entries if e.rule == "intra"}
    assert not pm.cidrs


def test_policy_map_delta_carries_fqdn_changes():
    old = compile_policy_map(options("web->dns(a.com):tcp/443"), IDS)
    new = compile_policy_map(options("web->dns(b.com):tcp/443 api->dns(a.com)"), IDS)
    delta = old.delta(new)
    assert {e.pattern for e in delta.fqdns_added} == {"b.com", "a.com"}
    assert {e.rule for e in delta.fqdns_removed} == {"web->dns(a.com):tcp/443"}
    assert not delta.empty and old.apply(delta) == new
    assert old.delta(old).empty
    assert PolicyMap(IDS) != PolicyMap(IDS, fqdns=new.fqdns)


def learned(segment, rule, address, name="api.example.com"):
    return {(segment, rule): {address: fqdn.Learned(address, name, 1000.0, 1060.0)}}


def test_compiled_policy_has_fqdn_entries():
    compiled = compile_policy(options("web->dns(API.example.com):tcp/443"), [Member("e", "web")])
    web = compiled.identities["web"]
    assert compiled.fqdns == {FqdnEntry(web, "api.example.com", "tcp", 443, 443,
                                        "web->dns(api.example.com):tcp/443")}
    assert not compiled.cidrs


@pytest.mark.parametrize("egress", ["deny", "allow"])
def test_verdict_allows_only_learned_addresses_of_the_rule_and_segment(egress):
    rule = "web->dns(api.example.com):tcp/443"
    compiled = compile_policy(options(rule, egress=egress), [Member("e", "web"), Member("f", "api")])
    known = learned("web", rule, "10.210.0.5")
    v = verdict(compiled, ("segment", "web"), ("addr", "10.210.0.5"), "tcp", 443, known)
    assert v.allowed and v.origin == rule and v.answer.name == "api.example.com"
    assert "DNS answer for api.example.com" in v.reason
    denied = [verdict(compiled, ("segment", "web"), ("addr", "10.210.0.5"), "tcp", 80, known),
              verdict(compiled, ("segment", "web"), ("addr", "10.210.0.6"), "tcp", 443, known),
              verdict(compiled, ("segment", "api"), ("addr", "10.210.0.5"), "tcp", 443, known),
              verdict(compiled, ("segment", "web"), ("addr", "10.210.0.5"), "tcp", 443)]
    for v in denied:
        assert v.origin is None and v.answer is None
        assert v.allowed is (egress == "allow")
        assert v.reason == ("egress denied" if egress == "deny" else "egress allowed (secnet.egress=allow)")


def test_cidr_rule_wins_over_dns_rule_and_reference_agrees():
    rules = "web->dns(a.com):tcp/443 web->10.210.0.0/16:tcp"
    compiled = compile_policy(options(rules, egress="deny"), [Member("e", "web")])
    known = learned("web", "web->dns(a.com):tcp/443", "10.210.0.5", "a.com")
    v = verdict(compiled, ("segment", "web"), ("addr", "10.210.0.5"), "tcp", 443, known)
    assert v.origin == "web->10.210.0.0/16:tcp"
    opts = options(rules, egress="deny")
    for address, port, expected in (("10.210.0.5", 443, True), ("10.211.0.5", 443, True),
                                    ("10.211.0.5", 80, False), ("10.211.0.6", 443, False)):
        got = verdict(compiled, ("segment", "web"), ("addr", address), "tcp", port,
                      learned("web", "web->dns(a.com):tcp/443", "10.211.0.5", "a.com"))
        ref = reference_allowed(opts, compiled.segments, ("segment", "web"), ("addr", address), "tcp",
                                port, learned("web", "web->dns(a.com):tcp/443", "10.211.0.5"))
        assert got.allowed is ref is expected


NAMES = ("a.test", "*.test", "b.c.test")
ADDRS = ("10.210.0.1", "10.210.0.2", "fd00:210::1")


@given(st.lists(st.tuples(st.sampled_from(["web", "api", "*"]), st.sampled_from(NAMES),
                          st.sampled_from(["", ":tcp/443", ":tcp", ":udp/53-54", ":icmp"])),
                max_size=4),
       st.sampled_from(["allow", "deny"]),
       st.lists(st.tuples(st.sampled_from(["web", "api"]), st.integers(0, 3), st.sampled_from(ADDRS)),
                max_size=4),
       st.sampled_from(["web", "api"]), st.sampled_from(ADDRS),
       st.sampled_from([("tcp", 443), ("tcp", 80), ("udp", 53), ("icmp", None), ("tcp", None)]))
def test_verdict_with_learned_answers_agrees_with_reference(rules, egress, taught, src, address, flow):
    opts = options(" ".join(f"{s}->dns({n}){svc}" for s, n, svc in rules), egress=egress)
    compiled = compile_policy(opts, [Member("e", "web"), Member("f", "api")])
    learned = {}
    for segment, index, addr in taught:
        if opts.rules:
            rule = opts.rules[index % len(opts.rules)].text()
            learned.setdefault((segment, rule), {})[addr] = fqdn.Learned(addr, "x.test", 0.0, 1.0)
    got = verdict(compiled, ("segment", src), ("addr", address), *flow, learned)
    ref = reference_allowed(opts, compiled.segments, ("segment", src), ("addr", address), *flow, learned)
    assert got.allowed is ref
    assert (got.answer is not None) is (got.origin is not None)
