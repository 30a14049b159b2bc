"""The fixed nftables ruleset: one place per drop reason, audit by element, no rule per policy rule."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from plugin.enforce.backend import NetworkSpec
from plugin.enforce.nftables import fqdn, ruleset
from plugin.enforce.nftables.drops import (AUDITABLE, NFLOG_GROUP, REASONS, deny, log_prefix,
                                           parse_log_prefix)
from plugin.enforce.nftables.elements import ON, PolicyElements, ports_elements, setting_elements
from plugin.kernel.links import port_group
from segmentation.compiler import segments_of
from segmentation.identities import assign
from segmentation.options import parse_network_options
from segmentation.policymap import compile_policy_map, recompile_policy_map

NID = "0123456789ab" + "c" * 52
NET = NetworkSpec(NID, "sn-x", ("10.224.0.0/24", "fd00:224::/64"), ("10.224.0.1",))


def script(rules: str = "", **opts) -> str:
    options = parse_network_options({"secnet.allow": rules, **opts})
    ids = {"web": 256, "api": 257, "default": 258}
    policy = compile_policy_map(options, ids)
    every = {**PolicyElements.of(policy.entries | policy.cidrs).flat(), **setting_elements(policy, "enforce")}
    return ruleset.network_script(NID, NET, every)


def tables(text: str) -> dict:
    """family -> body of the table block."""
    out = {}
    for family in ("inet", "bridge"):
        start = text.index(f"table {family} secnet_{NID[:12]} {{\n")
        out[family] = text[start:text.index("\n}\n", start)]
    return out


def chain(body: str, name: str) -> str:
    start = body.index(f"  chain {name} {{")
    return body[start:body.index("\n  }", start)]


def rules_only(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(("add element",)))


def test_deny_is_a_goto_and_knows_its_reasons():
    assert deny("no-rule") == "goto drop_no_rule"
    with pytest.raises(ValueError):
        deny("because")


def test_log_prefix_round_trip():
    assert log_prefix(NID, "not-member") == f"sn {NID[:12]} not-member"
    assert parse_log_prefix(log_prefix(NID, "spoofed")) == (NID[:12], "spoofed", False)
    assert parse_log_prefix(log_prefix(NID, "no-rule", audit=True)) == (NID[:12], "no-rule", True)
    for junk in ("sn x nonsense", "IN=eth0", f"sn {NID[:12]} no-rule maybe"):
        assert parse_log_prefix(junk) is None


@pytest.mark.parametrize("family", ["inet", "bridge"])
def test_every_table_has_a_logging_counting_drop_chain_per_reason(family):
    body = tables(script())[family]
    for reason in REASONS:
        text = chain(body, "drop_" + reason.replace("-", "_"))
        assert text.rstrip().endswith(f'counter drop comment "deny:{reason}"')
        assert f'log group {NFLOG_GROUP} prefix "sn {NID[:12]} {reason}"' in text
        assert "limit rate 1/second burst 1 packets" in text and 'limit name "logcap"' in text
        audited = f"@{'audit' if family == 'inet' else 'baudit'} goto audit_" in text
        assert audited == (reason in AUDITABLE), reason


@pytest.mark.parametrize("family", ["inet", "bridge"])
def test_audit_chains_log_with_the_mark_and_let_pass(family):
    body = tables(script())[family]
    for reason in AUDITABLE:
        text = chain(body, "audit_" + reason.replace("-", "_"))
        inactive = reason in ("pending", "quarantined")
        if family == "inet" and inactive:   # counted in the bridge table, which sees every frame
            assert "counter" not in text and text.rstrip().endswith("goto pass"), text
        else:
            assert text.rstrip().endswith(f'comment "audit:{reason}"')
        assert ("goto pass" if family == "inet" else "accept") in text.splitlines()[-1]
        logged = [line for line in text.splitlines() if f'prefix "sn {NID[:12]} {reason} audit"' in line]
        if family == "bridge" and inactive:
            # IP flows of an inactive container are logged in the inet table, which sees only
            # a flow's first packets (U9-O5): here only the non-IP frames
            assert len(logged) == 1 and "@logl2 " in logged[0], text
        else:
            assert len(logged) == (5 if family == "bridge" else 4), text
    assert "audit_spoofed" not in body and "audit_invalid" not in body


def test_drops_go_through_the_drop_chains_only():
    for family, body in tables(script("web->api:tcp/80", **{"secnet.egress": "deny"})).items():
        chains = set(re.findall(r"  chain (\S+) \{", body))
        for target in re.findall(r"goto ((?:drop|audit)_\w+)", body):
            assert target in chains, (family, target)
        outside = re.sub(r"  chain drop_\w+ \{.*?\n  \}", "", body, flags=re.S)
        assert not re.search(r"\bdrop\b(?! comment)", outside.replace("drop_", "")), family


def test_the_rules_do_not_depend_on_the_policy():
    small = rules_only(script(""))
    large = rules_only(script("web->api:tcp/80 api->web:udp/53 web->10.0.0.0/8:tcp/443 "
                              "10.0.0.0/8->api:tcp/8000-9000 *->*:icmp", **{"secnet.egress": "deny",
                                                                            "secnet.intra": "deny"}))
    assert small == large
    assert "add element inet secnet_0123456789ab pol_port { 0x100 . 0x101 . tcp . 80 }" in script(
        "web->api:tcp/80")


def test_settings_are_elements():
    options = parse_network_options({"secnet.egress": "deny", "secnet.allow": "10.0.0.0/8->web:tcp/80"})
    policy = compile_policy_map(options, {"web": 256})
    assert setting_elements(policy, "audit") == {
        "restricted": {(256,): None}, "egress_allow": {}, "internal": {}, "audit": {ON: None},
        "baudit": {ON: None}, "intra": {(256,): None}}
    assert setting_elements(compile_policy_map(parse_network_options({}), {}), "enforce")[
        "egress_allow"] == {ON: None}


def test_intra_holds_the_segments_whose_members_may_send_each_other_anything():
    """(the bridge chain group_copy: broadcast and multicast copies within one segment)"""
    ids = {"web": 256, "api": 257}
    allow = compile_policy_map(parse_network_options({"secnet.allow": "web->api:udp/53"}), ids)
    assert setting_elements(allow, "enforce")["intra"] == {(256,): None, (257,): None}
    deny = compile_policy_map(parse_network_options({"secnet.allow": "web->api:udp/53",
                                                     "secnet.intra": "deny"}), ids)
    assert setting_elements(deny, "enforce")["intra"] == {}


INTRA_RULES = ["web->web:tcp/80", "web->web", "*->*:udp/53", "*->*", "api->web", "db->db:any", "web->api:udp/53"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(INTRA_RULES)), st.lists(st.sampled_from(INTRA_RULES)),
       st.sampled_from(["allow", "deny"]), st.sampled_from(["allow", "deny"]),
       st.lists(st.sampled_from(["web", "api", "db", "x", "y"])), st.lists(st.sampled_from(["web", "api", "db", "x", "y"])))
def test_intra_after_a_delta_is_the_intra_of_the_new_map(a, b, intra_a, intra_b, live_a, live_b):
    """A delta's ``intra`` elements, read from the policy elements the delta changed, are those
    of the new map counted afresh: rules, ``secnet.intra`` and segments change (a freed
    identity given to a new segment included)."""
    old_options = parse_network_options({"secnet.allow": ",".join(a), "secnet.intra": intra_a})
    options = parse_network_options({"secnet.allow": ",".join(b), "secnet.intra": intra_b})
    old_ids = assign({}, segments_of(old_options, live_a))
    old = compile_policy_map(old_options, old_ids)
    new, delta = recompile_policy_map(old, old_options, options, assign(old_ids, segments_of(options, live_b)))
    elements = PolicyElements.of(old.entries | old.cidrs)
    elements.change(delta.entries_added | delta.cidrs_added, delta.entries_removed | delta.cidrs_removed)
    assert setting_elements(new, "enforce", elements) == setting_elements(new, "enforce")


def test_a_group_copy_is_judged_in_the_bridge_table_before_inet_conntrack():
    text = ruleset.skeleton_script(NID, NET)
    forward = text.split("chain forward {")[1]
    group = forward.index("meta pkttype { broadcast, multicast } goto pass_link")
    # before any conntrack judgement; after the two rules that pass it alike (an established
    # unicast packet leaves on them without evaluating the group rule); passed without the
    # judged mark, which alone lets a flow pass on an unanswered conntrack entry (U17-F6)
    judged = "ct status confirmed ct mark & 0x01000000 == 0x01000000 goto pass"
    assert forward.index(judged) < group < forward.index("ct state invalid")
    assert "ct mark set ct mark | 0x01000000 accept" in text.split("chain pass {")[1].split("}")[0]
    assert "ct mark" not in text.split("chain pass_link {")[1].split("}")[0]
    host_in = text.split("chain host_in {")[1]
    assert host_in.index("meta pkttype { broadcast, multicast } goto host_judge") < host_in.index("ct state")
    assert "meta mark set iifname map @pid oifname . meta mark @pidk meta mark @intra accept" in text


def test_element_text():
    assert ruleset.element_text("eg4", ((256, 256), (167772160, 184549375), (6, 6), (443, 443))) \
        == "0x100 . 10.0.0.0/8 . tcp . 443"
    assert ruleset.element_text("in6", ((1, 5), (257, 257), (17, 17), (1, 1024))) \
        == "::1-::5 . 0x101 . udp . 1-1024"
    port = NET_port()
    els = ports_elements([port])
    assert ruleset.element_text("id4", ("10.224.0.5",), els["id4"][("10.224.0.5",)]) == "10.224.0.5 : 0x100"
    pub = next(iter(els["pub4"].items()))
    assert ruleset.element_text("pub4", *pub) == "0.0.0.0/0 . tcp . 8080 : 10.224.0.5 . 80"


def NET_port():
    from plugin.enforce.backend import Port
    return Port("e1", "snv1", "02:42:0a:e0:00:05", "10.224.0.5", None, 256, "web",
                published=(("tcp", "", 8080, 80),))


def test_a_flow_a_learned_address_admitted_counts_under_its_tag_then_passes():
    """Each learned-map lookup sets the packet mark to the element's tag (the DNS rules
    that taught it) and goes to fqdn_count, which counts it in fqdn_tags, then passes."""
    text = script("web->dns(api.example.com):tcp/443", **{"secnet.egress": "deny"})
    body = tables(text)["inet"]
    egress = chain(body, "egress")
    for kind in fqdn.KINDS:
        assert f"map @fqdn4_{kind} ct mark set ct mark | 0x00800000 goto fqdn_count" in egress
    rules = [r.strip() for r in chain(body, "fqdn_count").splitlines()[1:]]
    assert rules == ["meta mark @fqdn_tags goto pass", "goto pass"], rules
    assert "map fqdn4_port { type mark . ipv4_addr . inet_proto . inet_service : mark;" in body
    assert "set fqdn_tags { type mark; counter; }" in body
    assert "fq_port" not in text   # DNS rules have no policy elements: their flows count by tag


def _chain(body: str, name: str) -> list:
    """The lines of chain ``name`` (up to its closing brace, a line of its own: a rule may hold
    an anonymous set's braces)."""
    lines = [line.strip() for line in body.split(f"chain {name} {{", 1)[1].splitlines() if line.strip()]
    return lines[:lines.index("}")]


def test_frames_of_other_bridges_leave_the_bridge_chains_on_the_interface_group_first():
    group = f"{port_group(NET.bridge):#x}"
    body = tables(script())["bridge"]
    assert _chain(body, "ports_in")[1:3] == [f"meta iifgroup != {group} accept", "iifname != @veths accept"]
    assert _chain(body, "ports_out")[1:3] == [f"meta oifgroup != {group} accept", "oifname != @veths accept"]
    # forward: an enforced port's unicast frame with its MAC leaves on the next rule (no
    # group-copy rule walked); a unicast copy with another MAC (the bridge's flood) is dropped
    # its IP destination must be that container's (U17-F3)
    assert _chain(body, "ports_fwd")[1:5] == [
        f"meta oifgroup != {group} accept",
        "ether type ip oifname . ether daddr . ip daddr @ids4 oifname @ports accept",
        "ether type ip6 oifname . ether daddr . ip6 daddr @ids6 oifname @ports accept",
        'oifname @ports @ll,7,1 0 oifname . ether daddr != @macs counter drop comment "flooded copy"']
    assert _chain(body, "ports_fwd")[7].startswith("oifname @ports @ll,7,1 0 goto drop_not")
    assert _chain(body, "ports_fwd")[-1].endswith("goto group_copy")
    assert _chain(body, "ports_out")[-1] == '@ll,7,1 0 oifname . ether daddr != @macs counter drop comment "flooded copy"'



def test_the_port_group_is_the_bridges_own_and_below_two_to_the_31():
    groups = {port_group(f"sn-{i:04x}") for i in range(500)}
    assert len(groups) > 490   # 20 bits of a digest: a shared group costs the shortcut only
    assert all(0x5EC00000 <= g < 0x5ED00000 for g in groups)
    assert port_group("sn-x") == port_group("sn-x") != port_group("sn-y")
