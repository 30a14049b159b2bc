"""`secnet verify` exits 1 when a probe differs, and like every other non-zero exit it says
why in one line on stderr (contract, CLI: "Exit status 0 on success, non-zero with a one-line
reason on stderr otherwise"; user10, U10-F2). The matrix stays on stdout."""
from __future__ import annotations

import json

import pytest

from plugin.cli import main as cli

NID = "ef" * 32
CELL = {"src": "web", "dst": "api", "service": "tcp/8080", "family": 4, "expected": True,
        "observed": False, "outcome": "timeout", "would_drop": False, "reason": "allowed by rule web->api:tcp/8080",
        "src_container": "web1", "dst_container": "api1", "src_address": "10.236.0.2", "dst_address": "10.236.0.3"}


def report(mismatches: int) -> dict:
    cell = dict(CELL, observed=not mismatches)
    return {"network": NID, "mode": "enforce", "segments": ["api", "web"], "probes": 1, "seconds": 0.2,
            "mismatches": mismatches, "services": ["tcp/8080"], "unnamed": [], "cells": [cell],
            "idle": [], "single": [], "ok": not mismatches}


@pytest.fixture
def verify(monkeypatch):
    def use(mismatches):
        monkeypatch.setattr(cli, "call", lambda path, body, timeout=30.0: report(mismatches))
        monkeypatch.setattr(cli, "resolve_network", lambda ref: NID)
        monkeypatch.setattr(cli, "network_names", lambda: {})
    return use


@pytest.mark.parametrize("as_json", [False, True])
def test_a_mismatch_exits_1_with_one_line_on_stderr(verify, capsys, as_json):
    verify(1)
    assert cli.main(["verify", "net", *(["--json"] if as_json else [])]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("secnet: ") and "1 " in err and "mismatch" in err, err
    if as_json:
        assert json.loads(out)["mismatches"] == 1
    else:
        assert "MISMATCH" in out


def test_all_matching_exits_0_with_nothing_on_stderr(verify, capsys):
    verify(0)
    assert cli.main(["verify", "net"]) == 0
    assert capsys.readouterr().err == ""
