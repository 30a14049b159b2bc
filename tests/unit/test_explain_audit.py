"""`secnet explain` in audit mode (user9 U9-O4): a denied flow passes there, and explain says so,
as `secnet log` and `secnet verify` do; an allowed flow and enforce mode are unchanged."""
from __future__ import annotations

from plugin.cli.format import print_explain
from plugin.observe.explain import explain
from test_explain import ENDPOINTS, compiled


def test_audit_mode_marks_a_denied_flow_as_passing(capsys):
    got = explain(compiled(), ENDPOINTS, "api1", "web1", "tcp/8080", mode="audit")
    assert (got["allowed"], got["mode"], got["would_drop"]) == (False, "audit", True)
    print_explain(got)
    out = capsys.readouterr().out
    assert out.startswith("denied  ") and "  reason: no rule allows it\n" in out
    assert out.endswith("  audit mode: it passes; enforce mode would drop it\n")


def test_audit_mode_leaves_an_allowed_flow_and_enforce_mode_as_they_were(capsys):
    allowed = explain(compiled(), ENDPOINTS, "web1", "api1", "tcp/8080", mode="audit")
    assert (allowed["allowed"], allowed["would_drop"]) == (True, False)
    denied = explain(compiled(), ENDPOINTS, "api1", "web1", "tcp/8080")
    assert (denied["mode"], denied["would_drop"]) == ("enforce", False)
    for result in (allowed, denied):
        print_explain(result)
    assert "audit mode" not in capsys.readouterr().out


def _internal():
    from segmentation.compiler import compile_policy
    from segmentation.model import Member
    from segmentation.options import parse_network_options
    options = parse_network_options({"secnet.allow": "web->api:tcp/8080"}, internal=True)
    return compile_policy(options, [Member(e.id, e.segment, e.ipv4.split("/")[0], None, e.quarantine)
                                    for e in ENDPOINTS])


def test_audit_mode_still_drops_what_leaves_or_enters_an_internal_network(capsys):
    """U11-F1: --internal is Docker's setting, not policy: dropped in both modes, a
    quarantined or pending container's flows too; inside, audit mode passes as before."""
    c = _internal()
    for src, dst in (("web1", "10.230.250.1"), ("10.230.250.1", "api1"), ("bad1", "10.230.250.1"),
                     ("10.230.250.1", "new1")):
        got = explain(c, ENDPOINTS, src, dst, "tcp/8080", mode="audit")
        assert (got["allowed"], got["would_drop"], got["reason"]) == (False, False, "internal network"), got
        print_explain(got)
        assert "audit mode" not in capsys.readouterr().out
    inside = explain(c, ENDPOINTS, "api1", "web1", "tcp/8080", mode="audit")
    assert (inside["allowed"], inside["would_drop"]) == (False, True)
    enforce = explain(c, ENDPOINTS, "bad1", "10.230.250.1", "tcp/8080")
    assert (enforce["would_drop"], enforce["reason"]) == (False, "quarantined: empty label")
