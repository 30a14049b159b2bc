"""Tests of segmentation.compiler (and its agreement with segmentation.reference)."""

import ipaddress
from dataclasses import FrozenInstanceError, replace

import pytest
from hypothesis import given, settings, strategies as st

from segmentation.compiler import Verdict, compile_policy, policy_segments, verdict
from segmentation.identities import FIRST_SEGMENT
from segmentation.policymap import EGRESS, INGRESS
from segmentation.errors import PolicyError
from segmentation.model import Member
from segmentation.options import NetworkOptions
from segmentation.reference import reference_allowed
from segmentation.rules import Endpoint, Rule, Service, parse_rules

ANY = Service("any")


def opts(rules="", **kwargs):
    return NetworkOptions(rules=parse_rules(rules), **kwargs)


def members(*segments):
    return [Member(f"e{i}", s) for i, s in enumerate(segments)]


def Grant(service, origin):
    return (service, origin)


def east_west(compiled):
    """(src name, dst name) -> set of (Service, rule) of the compiled entries."""
    name = {i: s for s, i in compiled.identities.items()}
    out = {}
    for e in compiled.entries:
        out.setdefault((name[e.src], name[e.dst]), set()).add((e.service, e.rule))
    return out


def cidrs(compiled, direction):
    """segment name -> list of CidrEntry, sorted by rule."""
    name = {i: s for s, i in compiled.identities.items()}
    out = {}
    for c in sorted(compiled.cidrs, key=lambda c: c.rule):
        if c.direction == direction:
            out.setdefault(name[c.identity], []).append(c)
    return out


def seg(name):
    return ("segment", name)


def addr(ip):
    return ("addr", ip)


# --- compile_policy -------------------------------------------------------

def test_segments_come_from_rules_default_and_members():
    ms = members("web", "db") + [Member("q", "evil", quarantine="bad label"), Member("u", None)]
    compiled = compile_policy(opts("api->cache:tcp/1 10.0.0.0/8->front *->[::/0]"), ms)
    assert compiled.segments == ("api", "cache", "db", "default", "front", "web")
    assert "evil" not in policy_segments(opts(), ms)


def test_star_expands_over_every_segment_including_own():
    compiled = compile_policy(opts("monitor->*:tcp/9100", intra="deny"), members("web", "db"))
    grant = Grant(Service("tcp", 9100, 9100), "monitor->*:tcp/9100")
    for dst in ("db", "default", "monitor", "web"):
        assert east_west(compiled)[("monitor", dst)] == {grant}
    assert ("web", "monitor") not in east_west(compiled)


def test_intra_allow_adds_implicit_grant_on_every_segment():
    compiled = compile_policy(opts("web->api:tcp/80"), members("db"))
    for s in compiled.segments:
        assert east_west(compiled)[(s, s)] == {Grant(ANY, "intra")}
    assert east_west(compiled)[("web", "api")] == {Grant(Service("tcp", 80, 80), "web->api:tcp/80")}
    assert set(east_west(compiled)) == {("web", "api")} | {(s, s) for s in compiled.segments}


def test_intra_deny_keeps_explicit_rules():
    compiled = compile_policy(opts("web->web:tcp/80 *->*:icmp", intra="deny"), members("db"))
    assert east_west(compiled)[("web", "web")] == {
        Grant(Service("tcp", 80, 80), "web->web:tcp/80"), Grant(Service("icmp"), "*->*:icmp")}
    assert east_west(compiled)[("db", "db")] == {Grant(Service("icmp"), "*->*:icmp")}
    assert verdict(compiled, seg("web"), seg("web"), "tcp", 80).allowed
    assert not verdict(compiled, seg("web"), seg("web"), "tcp", 81).allowed
    assert verdict(compiled, seg("db"), seg("db"), "tcp", 80) == Verdict(False, None, "no rule allows it")


def test_one_grant_per_pair_and_rule():
    options = NetworkOptions(rules=parse_rules("web->*:tcp/80 *->api:tcp/80") * 2)
    compiled = compile_policy(options, [])
    assert east_west(compiled)[("web", "api")] == {
        Grant(Service("tcp", 80, 80), "web->*:tcp/80"), Grant(Service("tcp", 80, 80), "*->api:tcp/80")}


def test_compiled_form_is_per_segment_not_per_container():
    options = opts("web->api:tcp/80 10.0.0.0/8->web")
    few = compile_policy(options, members("web", "api"))
    many = compile_policy(options, members(*(["web"] * 50 + ["api"] * 50)))
    assert few == many


def test_cidr_source_with_star_restricts_every_segment():
    compiled = compile_policy(opts("10.0.0.0/8->*:tcp/80"), members("web", "db"))
    assert set(cidrs(compiled, INGRESS)) == set(compiled.segments)
    assert compiled.ingress_restricted == set(compiled.identities.values())
    for s in compiled.segments:
        (grant,) = cidrs(compiled, INGRESS)[s]
        assert (grant.cidr, grant.family, grant.rule) == ("10.0.0.0/8", 4, "10.0.0.0/8->*:tcp/80")


def test_egress_grants_and_defaults():
    compiled = compile_policy(opts("web->[2001:db8::/32]:tcp/443 *->1.1.1.1:udp/53", egress="deny"), [])
    assert [g.rule for g in cidrs(compiled, EGRESS)["web"]] == ["*->1.1.1.1/32:udp/53", "web->[2001:db8::/32]:tcp/443"]
    assert compiled.settings.egress == "deny" and cidrs(compiled, INGRESS) == {}
    internal = compile_policy(opts("a->b", internal=True), [])
    assert internal.settings.egress == "deny" and internal.internal


def test_compiled_policy_is_immutable():
    compiled = compile_policy(opts("a->b"), [])
    with pytest.raises(TypeError):
        compiled.identities["c"] = 999
    with pytest.raises(FrozenInstanceError):
        compiled.entries = frozenset()
    assert isinstance(compiled.entries, frozenset)


def test_identities_are_kept_and_new_segments_get_fresh_ones():
    first = compile_policy(opts("a->b"), [])
    assert set(first.identities.values()) <= set(range(FIRST_SEGMENT, 65536))
    second = compile_policy(opts("a->b c->a"), [], first.identities)
    assert {s: second.identities[s] for s in first.identities} == dict(first.identities)
    assert second.identities["c"] not in first.identities.values()


# --- verdict --------------------------------------------------------------

def test_verdict_reasons():
    compiled = compile_policy(
        opts("web->api:tcp/8080 web->[2001:db8::/32]:tcp/443 10.0.0.0/8->api:tcp/8080", egress="deny"),
        members("db"))
    assert verdict(compiled, seg("web"), seg("api"), "tcp", 8080) == Verdict(
        True, "web->api:tcp/8080", "allowed by rule web->api:tcp/8080")
    assert verdict(compiled, seg("api"), seg("web"), "tcp", 8080) == Verdict(False, None, "no rule allows it")
    assert verdict(compiled, seg("web"), seg("web"), "udp", 1).origin == "intra"
    assert verdict(compiled, seg("web"), addr("2001:db8::9"), "tcp", 443).origin == "web->[2001:db8::/32]:tcp/443"
    assert verdict(compiled, seg("web"), addr("2001:db9::9"), "tcp", 443) == Verdict(False, None, "egress denied")
    assert verdict(compiled, addr("10.2.3.4"), seg("api"), "tcp", 8080).allowed
    assert verdict(compiled, addr("11.2.3.4"), seg("api"), "tcp", 8080).reason == "no rule allows it"
    assert verdict(compiled, addr("11.2.3.4"), seg("web"), "tcp", 1) == Verdict(
        False, None, "no rule allows it: from outside, a segment no CIDR-source rule names is "
                     "reached only on its published ports (Docker behaviour)")
    assert verdict(compiled, ("host", "11.2.3.4"), seg("web"), "tcp", 1) == Verdict(
        True, None, "the host reaches a segment no CIDR-source rule names (Docker behaviour)")
    assert verdict(compiled, ("host", "10.2.3.4"), seg("api"), "tcp", 8080).allowed
    assert not verdict(compiled, ("host", "11.2.3.4"), seg("api"), "tcp", 8080).allowed
    assert verdict(compiled, ("quarantined", "label 'x y' is not a segment name"), seg("web"), "icmp") == Verdict(
        False, None, "quarantined: label 'x y' is not a segment name")
    assert not verdict(compiled, seg("web"), ("quarantined", "r"), "icmp").allowed


def test_egress_allow_and_family():
    compiled = compile_policy(opts("web->0.0.0.0/0:tcp/443"), [])
    assert verdict(compiled, seg("web"), addr("8.8.8.8"), "tcp", 22).reason.startswith("egress allowed")
    denied = compile_policy(opts("web->0.0.0.0/0:tcp/443", egress="deny"), [])
    assert verdict(denied, seg("web"), addr("8.8.8.8"), "tcp", 443).allowed
    assert not verdict(denied, seg("web"), addr("2001:db8::1"), "tcp", 443).allowed


def test_internal_network_blocks_outside_both_ways():
    compiled = compile_policy(opts("a->b", internal=True, egress="allow"), [])
    assert verdict(compiled, seg("a"), addr("8.8.8.8"), "icmp") == Verdict(False, None, "internal network")
    assert verdict(compiled, addr("8.8.8.8"), seg("a"), "icmp").reason == "internal network"
    assert verdict(compiled, seg("a"), seg("b"), "icmp").allowed


def test_port_none_means_every_port():
    compiled = compile_policy(opts("a->b:tcp/80 a->c:tcp", intra="deny"), [])
    assert not verdict(compiled, seg("a"), seg("b"), "tcp").allowed
    assert verdict(compiled, seg("a"), seg("c"), "tcp").allowed


@pytest.mark.parametrize("src, dst, proto, port, message", [
    (seg("nope"), seg("a"), "tcp", 1, "unknown segment 'nope'"),
    (seg("a"), addr("999.1.1.1"), "tcp", 1, "invalid address '999.1.1.1'"),
    (addr("1.1.1.1"), addr("2.2.2.2"), "tcp", 1, "two outside addresses"),
    (seg("a"), seg("a"), "sctp", 1, "unknown protocol 'sctp'"),
    (seg("a"), seg("a"), "tcp", 0, "invalid port 0 for tcp"),
    (seg("a"), seg("a"), "icmp", 8, "invalid port 8 for icmp"),
    (("container", "x"), seg("a"), "tcp", 1, "unknown kind of flow end 'container'"),
])
def test_verdict_refuses_bad_questions(src, dst, proto, port, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(")):
        verdict(compile_policy(opts("a->b"), []), src, dst, proto, port)


# --- properties: compiler == reference ------------------------------------

NAMES = ["web", "api", "db", "default"]
CIDRS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "192.168.0.0/24", "0.0.0.0/0",
         "2001:db8::/32", "2001:db8:1::/48", "::/0", "fd00::1/128"]
ADDRS = ["10.1.2.3", "10.1.9.9", "10.200.0.1", "192.168.0.7", "8.8.8.8",
         "2001:db8:1::5", "2001:db8:2::5", "fd00::1", "fe80::1"]
PROTOS = ["tcp", "udp", "icmp"]


@st.composite
def services(draw):
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
    if proto in ("tcp", "udp") and draw(st.booleans()):
        lo = draw(st.integers(1, 100))
        return Service(proto, lo, draw(st.integers(lo, 100)))
    return Service(proto)


segment_sides = st.one_of(st.sampled_from(NAMES).map(lambda n: Endpoint("segment", n)),
                          st.just(Endpoint("all", "*")))
cidr_sides = st.sampled_from(CIDRS).map(lambda c: Endpoint("cidr", c))


@st.composite
def rules(draw):
    src = draw(st.one_of(segment_sides, cidr_sides))
    dst = draw(segment_sides if src.kind == "cidr" else st.one_of(segment_sides, cidr_sides))
    return Rule(src, dst, draw(services()))


@st.composite
def networks(draw):
    rule_list = draw(st.lists(rules(), max_size=6))
    internal = draw(st.booleans()) and not any(
        "cidr" in (r.src.kind, r.dst.kind) for r in rule_list)
    options = NetworkOptions(
        default_segment=draw(st.sampled_from(NAMES)), rules=tuple(rule_list),
        intra=draw(st.sampled_from(["allow", "deny"])),
        egress=draw(st.sampled_from(["allow", "deny"])), internal=internal)
    member_list = [
        Member(f"e{i}", draw(st.sampled_from(NAMES + [None])),
               quarantine=draw(st.sampled_from([None, None, "bad label"])))
        for i in range(draw(st.integers(0, 5)))
    ]
    return options, member_list


def naive_segments(options, member_list):
    names = {options.default_segment}
    names |= {e.value for r in options.rules for e in (r.src, r.dst) if e.kind == "segment"}
    names |= {m.segment for m in member_list if m.segment and m.quarantine is None}
    return sorted(names)


@st.composite
def probes(draw):
    """A few outside addresses and ports to ask about (plus every-port None)."""
    addrs = draw(st.lists(st.sampled_from(ADDRS), min_size=1, max_size=4, unique=True))
    ports = [None] + draw(st.lists(st.integers(1, 101), min_size=1, max_size=3))
    return addrs, ports


def all_flows(segments, addrs, ports):
    """Every ordered pair of flow ends, on every protocol and probed port."""
    ends = [seg(s) for s in segments] + [addr(a) for a in addrs] + [("quarantined", "bad")]
    for src in ends:
        for dst in ends:
            if src[0] == "addr" and dst[0] == "addr":
                continue
            yield src, dst, "icmp", None
            for proto in ("tcp", "udp"):
                for port in ports:
                    yield src, dst, proto, port


@settings(max_examples=200, deadline=None)
@given(networks(), probes())
def test_verdict_agrees_with_reference(network, probe):
    options, member_list = network
    compiled = compile_policy(options, member_list)
    assert list(compiled.segments) == naive_segments(options, member_list)
    origins = {r.text() for r in options.rules} | {"intra", None}
    for src, dst, proto, port in all_flows(compiled.segments, *probe):
        result = verdict(compiled, src, dst, proto, port)
        expected = reference_allowed(options, compiled.segments, src, dst, proto, port)
        assert result.allowed == expected, (options, src, dst, proto, port, result)
        assert result.origin in origins


@settings(max_examples=200, deadline=None)
@given(networks(), rules(), probes())
def test_adding_a_rule_never_removes_an_allowance_except_ingress(network, extra, probe):
    options, member_list = network
    if options.internal and "cidr" in (extra.src.kind, extra.dst.kind):
        return
    before = compile_policy(options, member_list)
    after = compile_policy(replace(options, rules=options.rules + (extra,)), member_list)
    for src, dst, proto, port in all_flows(before.segments, *probe):
        if src[0] == "addr":
            continue  # a CIDR-source rule legitimately restricts ingress
        if verdict(before, src, dst, proto, port).allowed:
            assert verdict(after, src, dst, proto, port).allowed, (extra, src, dst, proto, port)


@settings(max_examples=100)
@given(st.data())
def test_verdict_ip_matching_agrees_with_ipaddress(data):
    options, _ = data.draw(networks())
    compiled = compile_policy(options, [])
    for segment, grants in cidrs(compiled, EGRESS).items():
        for grant in grants:
            ip = ipaddress.ip_address(data.draw(st.sampled_from(ADDRS)))
            inside = ip.version == grant.family and ip in ipaddress.ip_network(grant.cidr)
            from segmentation.compiler import _cidr_matches
            assert _cidr_matches(grant, ip, "icmp", None) == (inside and grant.service.matches("icmp"))
