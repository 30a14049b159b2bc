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
