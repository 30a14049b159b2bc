"""Tests of segmentation.options and segmentation.model."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from segmentation.errors import OptionError, PolicyError
from segmentation.model import Member, Policy
from segmentation.options import OPTION_KEYS, NetworkOptions, parse_network_options
from segmentation.rules import parse_rule, parse_rules, rule_texts


def test_defaults_follow_the_contract():
    opts = parse_network_options({})
    assert opts == NetworkOptions()
    assert (opts.segment_label, opts.default_segment, opts.rules) == ("secnet.segment", "default", ())
    assert (opts.intra, opts.egress, opts.bridge, opts.mtu, opts.backend) == (
        "allow", "allow", None, 1500, "nftables")
    assert parse_network_options(None) == NetworkOptions()


def test_every_option_is_read():
    opts = parse_network_options({
        "secnet.segment-label": "com.docker.compose.service",
        "secnet.default-segment": "misc",
        "secnet.allow": "web->api:tcp/8080, api->db:tcp/5432",
        "secnet.intra": "deny",
        "secnet.egress": "DENY",
        "secnet.bridge": "br-sec0",
        "secnet.mtu": "9000",
        "secnet.backend": "nftables",
    }, internal=False, ipv6=True)
    assert opts.segment_label == "com.docker.compose.service"
    assert opts.default_segment == "misc"
    assert opts.rules == parse_rules("web->api:tcp/8080 api->db:tcp/5432")
    assert (opts.intra, opts.egress, opts.bridge, opts.mtu) == ("deny", "deny", "br-sec0", 9000)
    assert opts.ipv6 is True and opts.internal is False


def test_foreign_keys_are_ignored():
    opts = parse_network_options({"com.docker.network.bridge.name": "x y", "foo": "bar",
                                  "secnetish": "1"})
    assert opts == NetworkOptions()


def test_mtu_sources_and_precedence():
    assert parse_network_options({}, docker_mtu="9000").mtu == 9000
    assert parse_network_options({}, docker_mtu=1400).mtu == 1400
    assert parse_network_options({"com.docker.network.driver.mtu": "1450"}).mtu == 1450
    assert parse_network_options({"secnet.mtu": "1300"}, docker_mtu="9000").mtu == 1300
    assert parse_network_options({}, docker_mtu="0").mtu == 1500


@pytest.mark.parametrize("docker_mtu", ["100", "abc", 70000, True])
def test_bad_docker_mtu_names_dockers_key(docker_mtu):
    with pytest.raises(OptionError) as info:
        parse_network_options({}, docker_mtu=docker_mtu)
    assert info.value.key == "com.docker.network.driver.mtu"
    assert f"'{docker_mtu}'" in str(info.value) and "1280-65535" in str(info.value)


@pytest.mark.parametrize("key", ["secnet.segment", "secnet.foo", "secnet.Allow", "SECNET.allow", "secnet."])
def test_unknown_secnet_key_lists_allowed_keys(key):
    with pytest.raises(OptionError) as info:
        parse_network_options({key: "x"})
    message = str(info.value)
    assert message.startswith(f"unknown option {key}: allowed options are ")
    assert all(k in message for k in OPTION_KEYS)
    assert info.value.key == key


@pytest.mark.parametrize("key, value, allowed", [
    ("secnet.segment-label", "", "a Docker label key"),
    ("secnet.segment-label", "my label", "without whitespace"),
    ("secnet.segment-label", "a=b", "without whitespace or '='"),
    ("secnet.segment-label", "x" * 256, "1-255 printable"),
    ("secnet.segment-label", "a\x00b", "printable"),
    ("secnet.default-segment", "-bad", "a segment name is 1-63"),
    ("secnet.default-segment", "", "must not be empty"),
    ("secnet.default-segment", "10.1.1.1", "is an IP address"),
    ("secnet.intra", "maybe", "allowed: allow, deny"),
    ("secnet.egress", "", "allowed: allow, deny"),
    ("secnet.bridge", "", "a Linux interface name"),
    ("secnet.bridge", "x" * 16, "1-15 letters"),
    ("secnet.bridge", "br/0", "a Linux interface name"),
    ("secnet.bridge", "br 0", "a Linux interface name"),
    ("secnet.bridge", ".", "not '.' or '..'"),
    ("secnet.bridge", "..", "not '.' or '..'"),
    ("secnet.mtu", "1279", "an integer 1280-65535"),
    ("secnet.mtu", "65536", "an integer 1280-65535"),
    ("secnet.mtu", "1_500", "an integer 1280-65535"),
    ("secnet.mtu", " 1500", "an integer 1280-65535"),
    ("secnet.mtu", "jumbo", "an integer 1280-65535"),
    ("secnet.backend", "iptables", "allowed: nftables"),
    ("secnet.intra", 1, "expected a string"),
])
def test_bad_values_name_key_value_and_allowed(key, value, allowed):
    with pytest.raises(OptionError) as info:
        parse_network_options({key: value})
    err = info.value
    assert err.key == key
    assert allowed in err.allowed
    message = str(err)
    assert message.startswith("invalid value '") and f"for option {key}: " in message
    assert "\n" not in message and "\x00" not in message
    if len(str(value)) < 100 and str(value).isprintable():
        assert f"'{value}'" in message or f"'{str(value).lower()}'" in message


def test_bad_rule_names_key_and_rule():
    with pytest.raises(OptionError) as info:
        parse_network_options({"secnet.allow": "a->b, web->api:tcp/99999"})
    assert str(info.value) == (
        "invalid value 'a->b, web->api:tcp/99999' for option secnet.allow: "
        "invalid rule 'web->api:tcp/99999': port 99999 out of range 1-65535"
    )
    assert info.value.__cause__.rule == "web->api:tcp/99999"


@pytest.mark.parametrize("rules", ["web->10.0.0.0/8", "10.0.0.0/8->*:tcp/80", "a->b, *->[::/0]"])
def test_internal_network_refuses_cidr_rules(rules):
    with pytest.raises(OptionError) as info:
        parse_network_options({"secnet.allow": rules}, internal=True)
    assert info.value.key == "secnet.allow"
    assert "internal network" in str(info.value)
    assert parse_network_options({"secnet.allow": rules}).internal is False


def test_internal_network_accepts_segment_rules_and_egress_allow():
    opts = parse_network_options({"secnet.allow": "a->b", "secnet.egress": "allow"}, internal=True)
    assert opts.internal and opts.egress == "allow" and len(opts.rules) == 1


def test_dict_round_trip_through_json():
    opts = parse_network_options({
        "secnet.allow": "web->[2001:db8::/32]:tcp/443 10.0.0.0/8->web:tcp/80 *->dns:udp/53",
        "secnet.bridge": "sn0", "secnet.intra": "deny"}, docker_mtu="9000", ipv6=True)
    data = json.loads(json.dumps(opts.to_dict()))
    assert data["rules"] == ["web->[2001:db8::/32]:tcp/443", "10.0.0.0/8->web:tcp/80", "*->dns:udp/53"]
    assert NetworkOptions.from_dict(data) == opts
    assert NetworkOptions.from_dict({"future": 1}) == NetworkOptions()
    assert NetworkOptions.from_dict({"rules": "a->b c->d"}).rules == parse_rules("a->b c->d")


def test_from_dict_validates():
    with pytest.raises(OptionError, match="secnet.mtu"):
        NetworkOptions.from_dict({"mtu": 10})
    with pytest.raises(PolicyError, match="invalid rule 'a->'"):
        NetworkOptions.from_dict({"rules": ["a->"]})


def test_constructor_validates_types():
    with pytest.raises(TypeError):
        NetworkOptions(rules=("a->b",))
    with pytest.raises(TypeError):
        NetworkOptions(internal="yes")
    with pytest.raises(OptionError, match="secnet.mtu"):
        NetworkOptions(mtu=True)
    assert NetworkOptions(rules=[parse_rule("a->b")]).rules == (parse_rule("a->b"),)


# --- model ----------------------------------------------------------------

def test_policy_rule_edits():
    policy = Policy(NetworkOptions())
    a, b = parse_rule("a->b"), parse_rule("b->c:tcp/1")
    assert policy.with_rules([a, b, a]).rules == (a, b)
    added, edit = policy.with_rules([a]).add_rules([a, b])
    assert added.rules == (a, b) and (edit.before, edit.added, edit.removed) == ((a,), (b,), ())
    removed, edit = policy.with_rules([a, b]).remove_rules([a])
    assert removed.rules == (b,) and (edit.before, edit.added, edit.removed) == ((a, b), (), (a,))
    with pytest.raises(PolicyError, match="rule 'b->c:tcp/1' is not in the policy"):
        policy.with_rules([a]).remove_rules([b])
    twice = Policy(NetworkOptions(rules=(a, b, a)))       # not a plain edit: no RuleEdit
    assert twice.add_rules([b]) == (Policy(NetworkOptions(rules=(a, b))), None)
    assert twice.remove_rules([a]) == (Policy(NetworkOptions(rules=(b,))), None)


EDIT_RULES = ["a->b", "b->c:tcp/1", "c->a:udp/53", "*->a:icmp", "a->b:tcp/1-9"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(EDIT_RULES)),
       st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from(EDIT_RULES), min_size=1)), max_size=8))
def test_edits_hand_on_the_rule_texts_they_know(start, edits):
    """A chain of adds and removes: each result's rule_text_set (handed on by the edit, not
    recomputed) is that of its rules, and the rules are those of a plain list computation."""
    policy = Policy(NetworkOptions(rules=parse_rules(" ".join(start))))
    expected = list(rule_texts(policy.rules))
    for add, texts in edits:
        rules = parse_rules(" ".join(texts))
        if add:
            policy, _edit = policy.add_rules(rules)
            expected += [r.text() for r in rules if r.text() not in expected]
        else:
            rules = [r for r in rules if r.text() in expected]
            if not rules:
                continue
            policy, _edit = policy.remove_rules(rules)
            expected = [t for t in expected if t not in {r.text() for r in rules}]
        assert rule_texts(policy.rules) == expected
        assert policy.options.rule_text_set() == frozenset(expected)


def test_policy_edits_keep_validation():
    policy = Policy(NetworkOptions(internal=True))
    with pytest.raises(OptionError, match="internal network"):
        policy.add_rules([parse_rule("web->0.0.0.0/0")])


def test_member_validation():
    member = Member("e1", "web", "10.0.0.2", "2001:db8::2")
    assert member.effective_segment == "web"
    assert Member("e2", "web", quarantine="bad label").effective_segment is None
    assert Member("e3", None).effective_segment is None
    with pytest.raises(PolicyError, match="invalid segment name '-x'"):
        Member("e4", "-x")
    assert Member("e4", "-x", quarantine="bad label").effective_segment is None
    assert Member("e6", "web", "", "").ipv4 is None
    for v4, v6 in [("2001:db8::2", None), (None, "10.0.0.2"), ("10.0.0.2/24", None)]:
        with pytest.raises(ValueError):
            Member("e5", "web", v4, v6)


def test_backend_and_mode_options():
    opts = parse_network_options({"secnet.backend": "EBPF", "secnet.mode": "Audit"})
    assert (opts.backend, opts.mode) == ("ebpf", "audit")
    for key, value in (("secnet.backend", "bpf"), ("secnet.mode", "dry-run")):
        with pytest.raises(OptionError) as err:
            parse_network_options({key: value})
        assert key in str(err.value) and value in str(err.value)


def test_an_arrow_spaced_on_one_side_is_refused_at_create():
    with pytest.raises(OptionError) as info:
        parse_network_options({"secnet.allow": "web-> api"})
    assert str(info.value).startswith("invalid value 'web-> api' for option secnet.allow: "
                                      "invalid rule 'web-> api': whitespace on one side of '->'")


@pytest.mark.parametrize("key, meant", [
    ("secent.egress", "secnet.egress"), ("secnet_egress", "secnet.egress"), ("egress", "secnet.egress"),
    ("Intra", "secnet.intra"), ("sn.allow", "secnet.allow"), ("secnett.egres", "secnet.egress"),
    ("secnet-mode", "secnet.mode"), ("secnt.alow", "secnet.allow")])
def test_a_key_plainly_meant_as_a_secnet_option_is_refused_naming_it(key, meant):
    """U26-F1: `-o secent.egress=deny` ignored left egress open."""
    with pytest.raises(OptionError) as err:
        parse_network_options({key: "deny"})
    assert str(err.value).startswith(f"unknown option {key}: did you mean {meant}? allowed options are ")


@pytest.mark.parametrize("key", ["com.docker.network.bridge.name", "foo.bar", "secret.key", "my.label",
                                 "com.docker.network.egress"])
def test_somebody_elses_keys_are_still_ignored(key):
    assert parse_network_options({key: "x"}) == parse_network_options({})


def test_secnet_with_another_separator_and_an_unknown_name_is_refused():
    with pytest.raises(OptionError) as err:
        parse_network_options({"secnet_foo": "1"})
    assert "options of secnet start with 'secnet.'" in str(err.value)
