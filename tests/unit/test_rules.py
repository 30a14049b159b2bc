"""Tests of segmentation.rules, segmentation.names and segmentation.errors."""

import pytest
from hypothesis import given, strategies as st

from segmentation.errors import OptionError, PolicyError, RuleError, shown
from segmentation.names import check_segment_name, is_segment_name
from segmentation.rules import (
    _FEW, Endpoint, Rule, Service, format_rules, parse_rule, parse_rules, rules_not_in, rules_without,
    split_rules,
)


# --- names ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["web", "a", "A9", "db_1", "svc.api-v2", "0", "x" * 63, "2024", "v1.2", "1.2.3.4.5"])
def test_valid_segment_names(name):
    assert is_segment_name(name)
    assert check_segment_name(name) == name


@pytest.mark.parametrize("name", [
    "", "-web", "_web", ".web", "x" * 64, "we b", "web/1", "we:b", "wéb", "*",
    "10.0.0.1", "10.0.0.300", "010.0.0.1", None, 5,
    "127.1", "10.1", "10.1.2", "0x7f.1", "0x7f.0.0.1", "10.300.1",   # inet_aton short forms (U11-F2)
])
def test_invalid_segment_names(name):
    assert not is_segment_name(name)
    with pytest.raises(PolicyError) as info:
        check_segment_name(name, what="default segment")
    assert f"invalid default segment name '{name}'" in str(info.value)


def test_address_is_not_a_segment_name():
    with pytest.raises(PolicyError, match="is an IP address"):
        check_segment_name("192.168.1.1")


# --- errors ---------------------------------------------------------------

def test_error_messages_stay_one_line():
    err = RuleError("a\nb->c", "bad")
    assert str(err) == "invalid rule 'a\\nb->c': bad"
    assert "\n" not in str(OptionError("secnet.intra", "x\ny", "allowed: allow, deny"))
    assert shown("x" * 500).endswith("...") and len(shown("x" * 500)) == 200


def test_error_hierarchy_and_attributes():
    err = OptionError("secnet.intra", "maybe", "allowed: allow, deny")
    assert isinstance(err, PolicyError) and isinstance(err, ValueError)
    assert (err.key, err.value, err.allowed) == ("secnet.intra", "maybe", "allowed: allow, deny")
    assert str(err) == "invalid value 'maybe' for option secnet.intra: allowed: allow, deny"
    unknown = OptionError.unknown_key("secnet.foo", ("secnet.a", "secnet.b"))
    assert str(unknown) == "unknown option secnet.foo: allowed options are secnet.a, secnet.b"
    rule_err = RuleError("x", "why")
    assert (rule_err.rule, rule_err.reason) == ("x", "why")


# --- parsing: accepted forms ----------------------------------------------

@pytest.mark.parametrize("text", [
    "web->api:tcp/8080", "api->db:tcp/5432", "*->dns:udp/53", "monitor->*",
    "web->0.0.0.0/0:tcp/443", "10.0.0.0/8->web:tcp/80",
    "web->[2001:db8::/32]:tcp/443", "[2001:db8::/32]->web:udp/1000-2000",
    "web->web:icmp", "a->b:tcp", "*->*", "10.0.0.0/8->*:tcp/80", "web->[::/0]",
])
def test_canonical_rules_round_trip(text):
    rule = parse_rule(text)
    assert rule.text() == text
    assert str(rule) == text
    assert parse_rule(rule.text()) == rule


@pytest.mark.parametrize("text, canonical", [
    ("web->10.1.2.3", "web->10.1.2.3/32"),
    ("10.1.2.3->web:tcp/80", "10.1.2.3/32->web:tcp/80"),
    ("web->[2001:db8::1]", "web->[2001:db8::1/128]"),
    ("web->[2001:DB8:0:0::/64]:TCP/443", "web->[2001:db8::/64]:tcp/443"),
    ("web->api:any", "web->api"),
    ("web->api:UDP/53-53", "web->api:udp/53"),
    ("  web -> api:tcp/80 ", "web->api:tcp/80"),
    ("web->api:tcp/080", "web->api:tcp/80"),
])
def test_rules_are_normalised(text, canonical):
    assert parse_rule(text).text() == canonical


def test_parsed_structure():
    rule = parse_rule("web->[2001:db8::/32]:tcp/1000-2000")
    assert rule.src == Endpoint("segment", "web")
    assert rule.dst.kind == "cidr" and rule.dst.value == "2001:db8::/32"
    assert rule.dst.family == 6 and rule.dst.network.prefixlen == 32
    assert rule.service == Service("tcp", 1000, 2000)
    assert parse_rule("10.0.0.0/8->*").src.family == 4
    assert parse_rule("a->*").dst == Endpoint("all", "*")
    assert parse_rule("a->b").service == Service("any")


# --- parsing: every error path --------------------------------------------

@pytest.mark.parametrize("text, reason", [
    ("web->api:tcp/99999", "port 99999 out of range 1-65535"),
    ("web->api:tcp/0", "port 0 out of range 1-65535"),
    ("web->api:tcp/1-70000", "port 70000 out of range 1-65535"),
    ("web->api:tcp/2000-1000", "port range 2000-1000 is reversed"),
    ("web->api:tcp/8a", "invalid port '8a'"),
    ("web->api:tcp/-5", "invalid port ''"),
    ("web->api:tcp/1-2-3", "invalid port '2-3'"),
    ("web->api:tcp/", "missing port after '/'"),
    ("web->api:icmp/8", "ports are only allowed with tcp or udp, not icmp"),
    ("web->api:any/80", "ports are only allowed with tcp or udp, not any"),
    ("web->api:sctp/80", "unknown protocol 'sctp'"),
    ("web->api:", "missing protocol after ':'"),
    ("web->[2001:db8::/32]:", "missing protocol after ':'"),
    ("web", "missing '->'"),
    ("a->b->c", "more than one '->'"),
    ("->api", "missing source"),
    ("web->", "missing destination"),
    ("web->:tcp", "missing destination"),
    ("", "empty rule"),
    ("10.0.0.0/8->192.168.0.0/16", "both sides are CIDRs"),
    ("[2001:db8::/32]->10.0.0.0/8:tcp/80", "both sides are CIDRs"),
    ("10.0.0.1/8->web", "host bits set in source '10.0.0.1/8' (did you mean 10.0.0.0/8?)"),
    ("web->[2001:db8::1/32]", "host bits set in destination '2001:db8::1/32'"),
    ("web->[10.0.0.0/8]", "IPv4 CIDR '10.0.0.0/8' must be written without brackets"),
    ("web->2001:db8::/32:tcp/443", "IPv6 CIDR '2001:db8::/32' must be written in brackets"),
    ("web->2001:db8::1", "must be written in brackets"),
    ("2001:db8::/32->web", "must be written in brackets"),
    ("web->[2001:db8::/32", "'[' without a closing ']'"),
    ("web->[2001:db8::/32]tcp", "unexpected 'tcp' after the destination"),
    ("2001:db8::/32]->web", "unbalanced brackets"),
    ("[]->web", "unbalanced brackets"),
    ("web->[fe80::1%eth0]", "has a zone index"),
    ("web->10.0.0.0/33", "destination '10.0.0.0/33' is not a valid CIDR"),
    ("web->[zz::/3]", "destination 'zz::/3' is not a valid CIDR"),
    ("web:tcp->api", "source 'web:tcp' is not a segment name, '*' or a CIDR"),
    ("-web->api", "source '-web' is not a segment name"),
    ("web->" + "x" * 64, "is not a segment name"),
    ("10.0.0.300->web", "looks like an IPv4 address"),
    ("web->127.1", "it is the IPv4 address 127.0.0.1 in short form"),     # U11-F2
    ("web->10.1:tcp/80", "it is the IPv4 address 10.0.0.1 in short form"),
    ("10.1.2->web", "it is the IPv4 address 10.1.0.2 in short form"),
    ("web->10.300.1", "looks like an IPv4 address in short form"),
    ("web->api:tcp:80", "unknown protocol 'tcp:80'"),
    ("web api->db", "unexpected whitespace"),
])
def test_rule_errors_name_rule_and_reason(text, reason):
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    assert info.value.rule == text
    assert reason in info.value.reason
    assert str(info.value).startswith(f"invalid rule '{text}': ")
    assert reason in str(info.value)


def test_rule_constructor_refuses_cidr_to_cidr():
    with pytest.raises(RuleError, match="both sides are CIDRs"):
        Rule(Endpoint("cidr", "10.0.0.0/8"), Endpoint("cidr", "::/0"), Service("any"))


# --- rule lists -----------------------------------------------------------

def test_parse_rules_separators_and_duplicates():
    rules = parse_rules("a->b:tcp/80, b->c;c->d\n\ta->b:TCP/80 d -> e ,;")
    assert format_rules(rules) == "a->b:tcp/80,b->c,c->d,d->e"
    assert format_rules(rules, sep="\n") == "a->b:tcp/80\nb->c\nc->d\nd->e"
    assert parse_rules("") == () and parse_rules(" ,; ") == ()
    assert split_rules("a -> b c->d") == ["a->b", "c->d"]


def test_parse_rules_names_the_bad_rule():
    with pytest.raises(RuleError) as info:
        parse_rules("a->b, web->api:tcp/99999, c->d")
    assert info.value.rule == "web->api:tcp/99999"


# --- Service / Endpoint values --------------------------------------------

def test_service_text_and_defaults():
    assert Service("tcp").text() == "tcp" and Service("tcp") == Service("tcp", 0, 65535)
    assert Service("tcp", 80, 80).text() == "tcp/80"
    assert Service("udp", 1000, 2000).text() == "udp/1000-2000"
    assert Service("icmp") == Service("icmp", 0, 0) and Service("icmp").text() == "icmp"
    assert Service("any").text() == "any" and (Service("any").lo, Service("any").hi) == (0, 0)


@pytest.mark.parametrize("args", [("sctp",), ("icmp", 1, 2), ("tcp", 0, 80), ("tcp", 90, 80), ("udp", 1, 70000)])
def test_service_refuses_bad_values(args):
    with pytest.raises(ValueError):
        Service(*args)


@pytest.mark.parametrize("service, proto, port, expected", [
    (Service("any"), "icmp", None, True),
    (Service("tcp"), "tcp", 22, True),
    (Service("tcp"), "tcp", None, True),
    (Service("tcp"), "udp", 22, False),
    (Service("tcp", 80, 90), "tcp", 90, True),
    (Service("tcp", 80, 90), "tcp", 91, False),
    (Service("tcp", 80, 90), "tcp", None, False),
    (Service("tcp", 1, 65535), "tcp", None, True),
    (Service("icmp"), "icmp", None, True),
    (Service("icmp"), "tcp", 1, False),
])
def test_service_matches(service, proto, port, expected):
    assert service.matches(proto, port) is expected


def test_endpoint_validation():
    assert Endpoint("cidr", "10.0.0.1").value == "10.0.0.1/32"
    assert Endpoint("all", "whatever").value == "*"
    for kind, value in [("cidr", "10.0.0.1/8"), ("segment", "10.0.0.1"), ("host", "x"),
                        ("cidr", "fe80::1%eth0")]:
        with pytest.raises(ValueError):
            Endpoint(kind, value)
    with pytest.raises(ValueError):
        Endpoint("segment", "web").network


# --- properties -----------------------------------------------------------

SEGMENTS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True).filter(is_segment_name)


@st.composite
def cidrs(draw):
    if draw(st.booleans()):
        addr = draw(st.ip_addresses(v=4))
        prefix = draw(st.integers(0, 32))
    else:
        addr = draw(st.ip_addresses(v=6))
        prefix = draw(st.integers(0, 128))
    import ipaddress
    return Endpoint("cidr", str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False)))


@st.composite
def services(draw):
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
    if proto in ("tcp", "udp") and draw(st.booleans()):
        lo = draw(st.integers(1, 65535))
        return Service(proto, lo, draw(st.integers(lo, 65535)))
    return Service(proto)


@st.composite
def rules(draw):
    seg_side = st.one_of(SEGMENTS.map(lambda s: Endpoint("segment", s)), st.just(Endpoint("all", "*")))
    src = draw(st.one_of(seg_side, cidrs()))
    dst = draw(seg_side if src.kind == "cidr" else st.one_of(seg_side, cidrs()))
    return Rule(src, dst, draw(services()))


@given(rules())
def test_text_round_trips(rule):
    assert parse_rule(rule.text()) == rule


@given(st.lists(rules(), max_size=8), st.sampled_from([",", ";", " ", "\n", ", "]))
def test_rule_lists_round_trip(rule_list, sep):
    parsed = parse_rules(format_rules(rule_list, sep=sep))
    assert parsed == tuple(dict.fromkeys(rule_list))


RULEISH = st.lists(st.sampled_from(["web", "api", "a", "1.2.3.4", "-", "->", ":", "tcp", "udp", "icmp", "any",
                                    "/", "80", "0", "65536", "8080-80", "-90", "*", "[", "]", "dns(", ")",
                                    "Tcp", "x_y.z", "_"]), min_size=1, max_size=7).map("".join)


@given(RULEISH)
def test_the_fast_path_agrees_with_the_general_parser(text):
    """fast_rule either declines (None) or gives what the general parser gives, field by
    field; it never accepts what the general parser refuses."""
    from segmentation.rulefast import fast_rule
    from segmentation.rules import _parse_general
    fast = fast_rule(text)
    try:
        general = _parse_general(text)
    except RuleError:
        assert fast is None
        return
    if fast is not None:
        assert (fast.src, fast.dst, fast.service, fast.text()) == \
            (general.src, general.dst, general.service, general.text())


def test_the_fast_path_takes_the_common_forms_and_declines_the_rest():
    from segmentation.rulefast import fast_rule
    for text, canonical in (("web->api:tcp/8080", "web->api:tcp/8080"), ("web->api", "web->api"),
                            ("*->db:udp/53-53", "*->db:udp/53"), ("a->b:any", "a->b"),
                            ("a->b:tcp/0080", "a->b:tcp/80"), ("a->b:icmp", "a->b:icmp")):
        rule = fast_rule(text)
        assert rule is not None and rule.text() == canonical == parse_rule(text).text()
    for text in ("web->10.0.0.0/8:tcp/443", "a->b:", "a->b:tcp/0", "a->b->c", "a->dns(x.org)", "a->b:TCP/1"):
        assert fast_rule(text) is None


# --- a set against the rules in force (known) -----------------------------------

IN_FORCE = parse_rules(" ".join(f"s{i}->s{i + 1}:tcp/{1000 + i}" for i in range(40))
                       + " web->10.0.0.0/8:tcp/443 a->dns(x.org) *->db")


def _known():
    return {rule.text(): rule for rule in IN_FORCE}


@given(st.lists(st.sampled_from([r.text() for r in IN_FORCE] + [
    "s1 -> s2:tcp/1001", "s1->s2:TCP/1001", "new->s2:udp/53", "x->y:tcp/1-2", "web->10.1.0.0/16",
    "s1->s2:tcp/01001", "s3->s4:tcp/1003"]), max_size=60))
def test_a_set_against_the_rules_in_force_parses_as_without_them(texts):
    """Same rules, same order, same duplicates dropped, whatever share of them is known."""
    text = " ".join(texts)
    assert parse_rules(text, _known()) == parse_rules(text)
    assert format_rules(parse_rules(text, _known())) == format_rules(parse_rules(text))


def test_a_set_that_keeps_most_rules_reuses_them_and_parses_the_rest():
    texts = [r.text() for r in IN_FORCE]
    texts[3] = "s3 -> s9:tcp/7"                      # changed, and not in canonical form
    rules = parse_rules(" ".join(texts), _known())
    assert rules[3].text() == "s3->s9:tcp/7" and rules[3] not in IN_FORCE
    assert all(new is old for new, old in zip(rules[4:], IN_FORCE[4:]))   # the same objects: not parsed
    assert [r.text() for r in rules[:3]] == texts[:3]


def _in_force():
    return IN_FORCE, frozenset(r.text() for r in IN_FORCE)


@given(st.lists(st.sampled_from([r.text() for r in IN_FORCE] + [
    "s1 -> s2:tcp/1001", "s1->s2:TCP/1001", "new->s2:udp/53", "x->y:tcp/1-2", "web->10.1.0.0/16",
    "s1->s2:tcp/01001", "s3->s4:tcp/1003"]), max_size=60))
def test_a_set_against_the_rules_in_force_given_with_their_texts_parses_as_without_them(texts):
    text = " ".join(texts)
    assert parse_rules(text, in_force=_in_force()) == parse_rules(text)
    assert format_rules(parse_rules(text, in_force=_in_force())) == format_rules(parse_rules(text))


def test_the_rules_in_force_given_with_their_texts_are_reused_when_most_are_kept():
    texts = [r.text() for r in IN_FORCE]
    texts[3] = "s3 -> s9:tcp/7"
    rules = parse_rules(" ".join(texts), in_force=_in_force())
    assert rules[3].text() == "s3->s9:tcp/7" and rules[3] not in IN_FORCE
    assert all(new is old for new, old in zip(rules[4:], IN_FORCE[4:]))   # the same objects: not parsed
    fresh = [f"n{i}->s{i}:tcp/{2000 + i}" for i in range(40)] + [texts[5]]   # mostly new: all parsed
    rules = parse_rules(" ".join(fresh), in_force=_in_force())
    assert [r.text() for r in rules] == fresh and rules[-1] is not IN_FORCE[5] and rules[-1] == IN_FORCE[5]
    assert parse_rules("a->b", in_force=((), frozenset()))[0].text() == "a->b"


def test_a_set_against_the_rules_in_force_still_names_the_bad_rule():
    texts = [r.text() for r in IN_FORCE] + ["web->api:tcp/99999"]
    with pytest.raises(RuleError) as info:
        parse_rules(" ".join(texts), _known())
    assert info.value.rule == "web->api:tcp/99999"


@pytest.mark.parametrize("text, parts", [
    ("a\t->\nb", ["a->b"]), ("a->b c -> d", ["a->b", "c->d"]), ("a->b c->d", ["a->b", "c->d"]),
    ("a\u2003->\u2003b c->d", ["a->b", "c->d"]),
])
def test_arrows_with_whitespace_on_both_sides_join_their_ends(text, parts):
    assert split_rules(text) == parts


@pytest.mark.parametrize("text", ["a ->b", "a-> b", "a->\u2003b c->d", "x-->y ->z"])
def test_split_rules_refuses_an_arrow_with_whitespace_on_one_side(text):
    with pytest.raises(RuleError):
        split_rules(text)


# --- whitespace around the arrow (U9-O2) ------------------------------------

@pytest.mark.parametrize("text, named", [
    ("web-> api", "web-> api"),
    ("web ->api:tcp/80", "web ->api:tcp/80"),
    ("a->b, web->\tapi:tcp/80;c->d", "web->\tapi:tcp/80"),
    ("a->b api->  web", "api->  web"),
])
def test_an_arrow_with_whitespace_on_one_side_is_refused(text, named):
    # whitespace separates rules: 'web-> api' is not silently the rule 'web->api'
    for parse in (parse_rules, parse_rule):
        if parse is parse_rule and ("," in text or text.startswith("a->b ")):
            continue
        with pytest.raises(RuleError) as info:
            parse(text)
        assert info.value.rule == named and "whitespace on one side of '->'" in str(info.value)
        assert "\n" not in str(info.value)


def test_an_arrow_with_whitespace_on_both_sides_is_one_rule():
    assert split_rules("a -> b c->d") == ["a->b", "c->d"]
    assert format_rules(parse_rules("web\t->\napi:tcp/80")) == "web->api:tcp/80"


# --- rule-set arithmetic ----------------------------------------------------

POOL = tuple(parse_rule(f"s{i % 7}->s{i % 5}:tcp/{i + 1}") for i in range(3 * _FEW))


@given(st.permutations(POOL), st.data())
def test_rules_without_is_rules_not_in_for_rules_there_once(rules, data):
    """Both ways (by position for a few texts, by filter for more): the rules not named, in order."""
    rules = tuple(rules)
    doomed = data.draw(st.sets(st.sampled_from(rules), max_size=2 * _FEW))
    texts = {r.text() for r in doomed}
    kept = rules_without(rules, texts)
    assert type(kept) is tuple and kept == tuple(rules_not_in(rules, texts))
    assert len(kept) == len(rules) - len(texts)


def test_rules_without_refuses_a_rule_not_there():
    with pytest.raises(ValueError):
        rules_without(POOL[:3], {POOL[4].text()})


@pytest.mark.parametrize("text", ["127.1", "10.1.2", "0x7f.1", "0x7f.0.0.1", "10.300.1", "1.65535",
                                  "1.65536", "09.1", "010.1", "0xff.0xffffff", "1.2.3.256", "1.16777216"])
def test_short_ipv4_forms_read_as_inet_aton_reads_them(text):
    """U11-F2: the address named in the error is the one glibc's inet_aton(3) reads."""
    import socket
    from segmentation.names import _inet_aton
    try:
        want = socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        want = None
    assert _inet_aton(text) == want
    assert not is_segment_name(text)
