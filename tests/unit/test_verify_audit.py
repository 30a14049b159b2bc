"""`secnet verify` expects what the network's mode does (user8, finding U8-F1):
in audit mode policy drops nothing, so a cell the policy denies is expected to
pass and is marked would-drop; the matrix says `audit` there."""
from __future__ import annotations

from plugin.cli import format as cli_format
from plugin.observe import verify
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import parse_network_options

from plugin.driver.state import EndpointRecord

NID = "ab" * 32


def _endpoints(sandbox: str) -> list:
    return [EndpointRecord(id=str(n) * 64, network_id=NID, veth_host=f"snv{n}", veth_peer=f"snp{n}",
                           mac="02:00:00:00:00:01", ipv4=f"10.224.0.{n + 1}/24", segment=seg,
                           quarantine=None, container=f"{seg}1", sandbox_key=sandbox)
            for n, seg in ((1, "web"), (2, "api"))]


def _plan(tmp_path, mode):
    sandbox = tmp_path / "netns"
    sandbox.write_text("")
    eps = _endpoints(str(sandbox))
    members = [Member(e.id, e.segment, e.ipv4.split("/")[0], None, None) for e in eps]
    compiled = compile_policy(parse_network_options({"secnet.allow": "web->api:tcp/8080"}), members)
    return verify.plan(compiled, eps, mode)[0]


def test_enforce_mode_expects_the_policy_verdict(tmp_path):
    cells = _plan(tmp_path, "enforce")
    assert not any(c["would_drop"] for c in cells)
    assert {(c["src"], c["service"]) for c in cells if c["expected"]} == {("web", "tcp/8080")}


def test_audit_mode_expects_every_cell_to_pass_and_marks_what_enforce_would_drop(tmp_path):
    cells = _plan(tmp_path, "audit")
    assert cells and all(c["expected"] for c in cells)
    would = {(c["src"], c["service"]) for c in cells if c["would_drop"]}
    assert ("web", "tcp/8080") not in would and ("api", "tcp/8080") in would and len(would) == len(cells) - 1
    api_web = next(c for c in cells if (c["src"], c["service"]) == ("api", "tcp/8080"))
    assert api_web["reason"].startswith("audit mode passes it; enforce mode would drop it: ")


def test_the_matrix_says_audit_where_enforce_mode_would_drop(capsys):
    base = {"dst": "api", "family": 4, "observed": True, "expected": True, "outcome": "connected",
            "src_container": "web1", "dst_container": "api1", "src_address": "10.224.0.2",
            "dst_address": "10.224.0.3", "src": "web"}
    cells = [dict(base, service="tcp/8080", would_drop=False, reason="allowed by rule web->api:tcp/8080"),
             dict(base, service="tcp/9", would_drop=True, reason="audit mode passes it; ...")]
    cli_format.print_verify({"network": NID, "mode": "audit", "segments": ["api", "web"], "probes": 2,
                             "seconds": 0.5, "mismatches": 0, "services": ["tcp/8080", "tcp/9"],
                             "unnamed": ["tcp/9"], "cells": cells, "idle": [], "single": []})
    out = capsys.readouterr().out
    assert out.startswith(f"verify network {NID[:12]} (audit mode): ")
    assert "web -> api  v4  allow    audit" in out and "MISMATCH" not in out
    assert "audit: passes in audit mode; enforce mode would drop it" in out


def test_nothing_to_probe_prints_no_empty_matrix(capsys):
    """user8 U8-O4: no header row or legend under "nothing to probe"."""
    cli_format.print_verify({"network": NID, "segments": ["api", "web"], "probes": 0, "seconds": 0.0,
                             "mismatches": 0, "services": ["tcp/8080", "tcp/9"], "unnamed": ["tcp/9"],
                             "cells": [], "idle": ["api"], "single": ["web"]})
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["nothing to probe: no segment pair has running members",
                         "not probed (no running member): api",
                         "not probed within the segment (one member only): web"], lines
