"""Audit mode with a quarantined member, on both backends (contract, Audit mode: every flow
enforce mode would drop "passes and is reported by `secnet log` with the reason and the mark
`audit` (one line per flow and second, as in enforce mode) and counted in the metrics as
would-drop"; Backends: "the same CLI output (`show`, `log`, `explain`, `verify`, `metrics`)").

A quarantined container opens one TCP connection to a member of another segment: enforce mode
would drop it because the sender is quarantined. The log has one line for it (none for its
replies), reason quarantined, and `show` counts it as a would-drop of reason quarantined only, not also as
"no rule allows it".
"""
from __future__ import annotations

import random
import time

import pytest

import helpers as h
import seg_helpers as s
import vis_helpers as v

PORT = h.LISTEN_PORT


def _network(make_network, backend):
    for _ in range(20):
        try:
            return make_network("u9-audq", subnet=f"10.235.{random.randint(0, 199)}.0/24",
                                opts={"secnet.mode": "audit", "secnet.backend": backend})
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise AssertionError("no free subnet in 10.235.0.0/16")


@pytest.mark.parametrize("backend", ["nftables", "ebpf"])
def test_a_quarantined_senders_flow_is_one_would_drop_of_reason_quarantined(make_network,
                                                                           run_container, backend):
    net = _network(make_network, backend)
    api = run_container(net, "u9-api", labels={"secnet.segment": "api"})
    bad = run_container(net, "u9-bad", labels={"secnet.segment": "bad name"})
    s.wait_segments(net, {api.name: "api"})
    why = v.secnet_json("explain", net.name, bad.name, api.name, f"tcp/{PORT}")
    assert (why["allowed"], why["mode"], why["would_drop"]) == (False, "audit", True), why
    since = v.log_cursor()
    before = s.show_json(net)["would_drop"]
    assert v.tcp_try(bad, api.ip, PORT, timeout=2), "audit mode dropped the quarantined flow"
    time.sleep(1.5)
    lines = [e for e in v.log_since(net, since)["entries"]
             if e["proto"] == "tcp" and e.get("dport") == PORT and e["src"].get("container") == bad.name]
    reasons = sorted(e["reason"] for e in lines)
    assert len(lines) == 1 and reasons[0] == "quarantined" and lines[0]["audit"], \
        f"[{backend}] log lines of the one flow: {[(e['reason'], e['why']) for e in lines]}"
    # its replies are no flow of their own (U9-O5: api -> bad with the ephemeral port as "dport")
    either = [(e["src"].get("container"), e["dst"].get("container"), e.get("dport"))
              for e in v.log_since(net, since)["entries"] if e["proto"] == "tcp"
              and bad.name in (e["src"].get("container"), e["dst"].get("container"))]
    assert either == [(bad.name, api.name, PORT)], f"[{backend}] log lines of one connection: {either}"
    after = s.show_json(net)["would_drop"]
    assert after["no-rule"]["packets"] == before["no-rule"]["packets"], \
        f"[{backend}] the quarantined flow was also counted as no-rule: {before} -> {after}"
    assert after["quarantined"]["packets"] > before["quarantined"]["packets"]
