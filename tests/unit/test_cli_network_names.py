"""The CLI names networks as the user named them (user10, U10-F1): `secnet status`,
`show`, `verify` and `log` (of every network) printed only a 12-character id, so a
user with several networks had to match ids against `docker network ls`. The daemon
knows ids only (Docker never tells a driver a network's name); the CLI asks the
engine, and falls back to the id when the engine does not answer."""
from __future__ import annotations

import json

import pytest

from plugin.cli import main as cli

NID, OTHER = "ab" * 32, "cd" * 32
NAMES = {NID: "shop-net", OTHER: "lab"}

STATUS = {"healthy": True, "reconcile_repairs": 0, "networks": [
    {"id": NID, "bridge": "sn-abab", "endpoints": 3, "backend": "nftables", "mode": "enforce",
     "pending": 0, "quarantined": 0, "rules": 1},
    {"id": OTHER, "bridge": "sn-cdcd", "endpoints": 0, "backend": "ebpf", "mode": "audit",
     "pending": 0, "quarantined": 0, "rules": 0}]}
SHOW = {"id": NID, "bridge": "sn-abab", "options": {}, "backend": "nftables", "mode": "enforce",
        "segments": [], "rules": [], "quarantined": [], "pending": [], "dropped": {},
        "would_drop": {}, "dns": []}
ENTRY = {"time": 1.0, "network": OTHER, "src": {"address": "10.236.0.2", "container": "a", "segment": "x"},
         "dst": {"address": "10.236.0.3", "container": "b", "segment": "y"}, "proto": "tcp", "dport": 80,
         "family": 4, "reason": "no-rule", "why": "no rule allows it", "audit": False, "seq": 1}
VERIFY = {"network": NID, "mode": "enforce", "segments": [], "probes": 0, "seconds": 0.1,
          "mismatches": 0, "services": [], "unnamed": [], "cells": [], "idle": [], "single": [], "ok": True}
ANSWERS = {"/secnet/status": STATUS, "/secnet/show": SHOW, "/secnet/verify": VERIFY,
           "/secnet/log": {"entries": [ENTRY], "cursor": 1}}


@pytest.fixture
def daemon(monkeypatch):
    monkeypatch.setattr(cli, "call", lambda path, body, timeout=30.0: json.loads(json.dumps(ANSWERS[path])))
    monkeypatch.setattr(cli, "resolve_network", lambda ref: NID)


def run(capsys, *argv) -> str:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def test_status_lists_each_network_by_name_and_id(daemon, monkeypatch, capsys):
    monkeypatch.setattr(cli, "network_names", lambda: NAMES)
    lines = run(capsys, "status").splitlines()
    assert any("shop-net" in l and NID[:12] in l and "endpoints 3" in l for l in lines), lines
    assert any("lab" in l and OTHER[:12] in l and "mode audit" in l for l in lines), lines
    data = json.loads(run(capsys, "status", "--json"))
    # by name, whatever order the daemon gave (U28-F5)
    assert [(n["id"], n["name"]) for n in data["networks"]] == [(OTHER, "lab"), (NID, "shop-net")]


def test_show_verify_and_log_name_the_network(daemon, monkeypatch, capsys):
    monkeypatch.setattr(cli, "network_names", lambda: NAMES)
    assert run(capsys, "show", "shop-net").startswith("network shop-net (bridge sn-abab, backend nftables,")
    assert json.loads(run(capsys, "--json", "show", "shop-net"))["name"] == "shop-net"
    assert run(capsys, "verify", "shop-net").startswith("verify network shop-net: ")
    assert "  lab  a (x, 10.236.0.2) -> b" in run(capsys, "log")


def test_without_the_engine_the_ids_are_shown(daemon, monkeypatch, capsys):
    monkeypatch.setattr(cli, "network_names", lambda: {})
    assert any(l.strip().startswith(NID[:12]) for l in run(capsys, "status").splitlines())
    assert run(capsys, "show", NID).startswith(f"network {NID[:12]} (bridge")
    assert "name" not in json.loads(run(capsys, "show", NID, "--json"))
    assert f"  {OTHER[:12]}  a (x, 10.236.0.2) -> b" in run(capsys, "log")


def test_show_names_the_networks_defaults_for_intra_and_egress(daemon, monkeypatch, capsys):
    """U26-F1: nothing `show` printed said whether `secnet.egress=deny` was in force."""
    monkeypatch.setattr(cli, "network_names", lambda: NAMES)
    answer = dict(SHOW, options={"intra": "allow", "egress": "deny", "internal": True})
    monkeypatch.setattr(cli, "call", lambda path, body, timeout=30.0: json.loads(json.dumps(
        answer if path == "/secnet/show" else ANSWERS[path])))
    head = run(capsys, "show", "shop-net").splitlines()[0]
    assert head == "network shop-net (bridge sn-abab, backend nftables, mode enforce, intra allow, egress deny, internal)"
