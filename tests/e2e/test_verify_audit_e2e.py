"""`secnet verify` judges a network by its mode: in audit mode nothing is dropped.

Found by black-box testing (user8, finding U8-F1): in audit mode every probe
passes (as audit mode promises), yet verify expected the enforce verdict,
printed a MISMATCH for every policy-denied cell and exited 1.
Contract (CLI): verify "prints expected vs observed ... Exit 0 when all match";
(Audit mode): "policy drops nothing".
"""
from __future__ import annotations

import pytest

import vis_helpers as v

pytestmark = pytest.mark.usefixtures("backend")

SEG = "secnet.segment"


def test_verify_in_audit_mode_expects_what_audit_mode_does(make_network, run_container):
    net = v.vis_network(make_network, "sn-u8-vaudit", ipv6=False,
                        opts={"secnet.allow": "web->api:tcp/8080", "secnet.mode": "audit"})
    run_container(net, "web", labels={SEG: "web"})
    run_container(net, "api", labels={SEG: "api"})
    res = v.secnet("verify", net.name)
    assert res.returncode == 0 and "MISMATCH" not in res.stdout, res.stdout[-1500:]
    report = v.secnet_json("verify", net.name)
    assert report["ok"] and report["mode"] == "audit", report
    cells = report["cells"]
    would = [c for c in cells if c["would_drop"]]
    assert would and all(c["observed"] and c["expected"] for c in would), would
    assert {(c["src"], c["dst"], c["service"]) for c in cells if not c["would_drop"]} \
        == {("web", "api", "tcp/8080")}, cells
    assert "audit" in res.stdout                                    # the matrix marks them

    assert v.secnet("mode", net.name, "enforce").returncode == 0   # the same cells, enforced
    report = v.secnet_json("verify", net.name)
    assert report["ok"] and report["mode"] == "enforce", report
    assert not any(c["would_drop"] for c in report["cells"])
    assert {(c["src"], c["dst"], c["service"]) for c in report["cells"] if c["expected"]} \
        == {("web", "api", "tcp/8080")}, report["cells"]
