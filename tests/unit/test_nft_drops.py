"""How the nftables backend writes drops: one chain per reason and table, logged and counted."""
from __future__ import annotations

import re

import pytest

from segmentation.backends import nftables as nft
from segmentation.backends.nft_verdicts import (NFLOG_GROUP, REASONS, deny, log_prefix,
                                                parse_log_prefix)
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import parse_network_options

NID = "0123456789ab" + "c" * 52


def script(rules="web->api:tcp/8080 web->0.0.0.0/0:tcp/443 10.0.0.0/8->api:tcp/80", **opts) -> str:
    options = parse_network_options({"secnet.allow": rules, **opts})
    ports = [nft.Port("e1", "snv1", "02:00:00:00:00:01", "10.224.0.2", "fd00:224::2", "web"),
             nft.Port("e2", "snv2", "02:00:00:00:00:02", "10.224.0.3", None, "api"),
             nft.Port("e3", "snv3", "02:00:00:00:00:03", "10.224.0.4", None, None, "bad")]
    members = [Member(p.endpoint_id, p.segment, p.ipv4, p.ipv6, p.quarantine) for p in ports]
    return nft.render_network(NID, "sn-x", compile_policy(options, members), ports, ["10.224.0.0/24"])


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


def test_deny_is_a_goto_and_knows_its_reasons():
    assert deny("no-rule") == "goto drop_no_rule"
    with pytest.raises(ValueError):
        deny("because")


def test_log_prefix_round_trip():
    assert log_prefix(NID, "not-member") == f"sn {NID[:12]} not-member"
    assert parse_log_prefix(log_prefix(NID, "spoofed")) == (NID[:12], "spoofed")
    assert parse_log_prefix("sn x nonsense") is None and parse_log_prefix("IN=eth0") is None


@pytest.mark.parametrize("family", ["inet", "bridge"])
def test_every_table_has_a_logging_counting_drop_chain_per_reason(family):
    body = tables(script())[family]
    for reason in REASONS:
        text = chain(body, "drop_" + reason.replace("-", "_"))
        assert text.rstrip().endswith(f'counter drop comment "deny:{reason}"')
        assert f'log group {NFLOG_GROUP} prefix "sn {NID[:12]} {reason}"' in text
        assert "limit rate 1/second burst 1 packets" in text and 'limit name "logcap"' in text
    for name in ("log4p", "log4", "log6p", "log6") + (("logl2",) if family == "bridge" else ()):
        assert re.search(rf"set {name} {{ type [^;]+; size \d+; flags dynamic,timeout; timeout \d+s; }}", body)


def test_drops_go_through_the_drop_chains_only():
    text = script(**{"secnet.egress": "deny"})
    for family, body in tables(text).items():
        chains = set(re.findall(r"  chain (\S+) \{", body))
        for target in re.findall(r"goto (drop_\w+)", body):
            assert target in chains, (family, target)
        outside = re.sub(r"  chain drop_\w+ \{.*?\n  \}", "", body, flags=re.S)
        assert not re.search(r"\bdrop\b(?! comment)", outside.replace("drop_", "")), family


def test_pair_drop_counters_precede_the_no_rule_drop():
    body = tables(script())["inet"]
    to_api = chain(body, "to_api").splitlines()
    assert to_api[-1].strip() == "goto drop_no_rule"
    counted = [line for line in to_api if line.strip().startswith("ip saddr @s_") and "accept" not in line]
    assert {line.split("@s_")[1].split("_4")[0] for line in counted} == {"api", "default", "web"}
    assert "counter comment" in chain(body, "eg_web") or "allow:egress" in chain(body, "eg_web")
