"""Audit mode, end to end (contract: "Audit mode"): policy drops nothing and
`secnet log` reports, marked audit, every flow enforce mode would drop; a
switch to enforce is atomic, cuts the established flows it does not allow,
and survives a daemon restart. Spoofed frames are dropped in both modes."""
from __future__ import annotations

import json
import socket

import pytest

import helpers as h
import seg_helpers as s
import vis_helpers as v
from nsprocs import nsprocs  # noqa: F401  (fixture)

POLICY = "web->api:tcp/8080"
SEGMENTS = ("web", "api", "db")
KINDS = (("tcp", 8080), ("tcp", 5432), ("udp", 53), ("icmp", None))


def _members(make_network, run_container, nsprocs, backend, mode):
    opts = {"secnet.allow": POLICY, "secnet.mode": mode, "secnet.backend": backend}
    net = s.seg_network(make_network, "sn-audit", opts=opts)
    cs = s.run_many(run_container, net, {seg: {"secnet.segment": seg} for seg in SEGMENTS})
    s.wait_segments(net, {c.name: seg for seg, c in cs.items()})
    nsprocs.servers(cs.values(), tcp=(8080, 5432), udp=(53,))
    return net, cs


def _cells(cs, compiled, enforce: bool) -> list:
    cells = []
    for src in SEGMENTS:
        for dst in SEGMENTS:
            if src == dst:
                continue
            for proto, port in KINDS:
                for fam in (4, 6):
                    allowed = s.expected(compiled, src, dst, proto, port)
                    cells.append({"key": s.cell_key(src, dst, proto, port, fam), "src": cs[src],
                                  "dst": cs[dst], "proto": proto, "port": port, "family": fam,
                                  "expected": allowed or not enforce, "policy": allowed})
    return cells


def _mode(net) -> str:
    return s.secnet("mode", net.name, check=True).stdout.strip()


def _segment_of(c, cs) -> str:
    return next(seg for seg, x in cs.items() if x is c)


def test_audit_passes_everything_and_logs_what_enforce_would_drop(make_network, run_container, nsprocs,
                                                                 backend):
    net, cs = _members(make_network, run_container, nsprocs, backend, "audit")
    assert _mode(net) == "audit"
    assert s.show_json(net)["mode"] == "audit"
    status = json.loads(s.secnet("status", "--json", check=True).stdout)
    assert {n["id"]: n["mode"] for n in status["networks"]}[net.id] == "audit"
    compiled = s.compiled_policy({"secnet.allow": POLICY}, [(c, seg, None) for seg, c in cs.items()])
    since = v.log_cursor()
    cells = _cells(cs, compiled, enforce=False)
    diff = s.diff_text(cells, s.matrix(cells))
    assert not diff, f"audit mode dropped traffic:\n{diff}"
    forbidden = [c for c in cells if not c["policy"] and c["proto"] == "tcp"]
    allowed = [c for c in cells if c["policy"]]
    assert forbidden and allowed
    for c in forbidden:
        dst, src_seg = s.addr_of(c["dst"], c["family"]), _segment_of(c["src"], cs)
        entry, _ = v.wait_entry(net, since, lambda e, dst=dst, src_seg=src_seg, c=c:
                                e["dst"]["address"] == dst and e["src"]["segment"] == src_seg
                                and e.get("dport") == c["port"], within=3.0)
        assert entry["audit"] is True and entry["why"] == "no rule allows it", entry
    entries = v.log_since(net, since)["entries"]
    for c in allowed:
        dst = s.addr_of(c["dst"], c["family"])
        assert not [e for e in entries if e["dst"]["address"] == dst and e.get("dport") == c["port"]
                    and e["src"]["segment"] == _segment_of(c["src"], cs)], f"allowed flow logged: {c['key']}"
    assert "audit" in s.secnet("log", net.name, check=True).stdout


def test_switching_to_enforce_drops_and_cuts_established_flows(make_network, run_container, nsprocs,
                                                              backend):
    net, cs = _members(make_network, run_container, nsprocs, backend, "audit")
    compiled = s.compiled_policy({"secnet.allow": POLICY}, [(c, seg, None) for seg, c in cs.items()])
    stream = v.udp_socket(cs["web"], 4)     # a forbidden flow web -> db udp/53, established
    db = s.addr_of(cs["db"], 4)
    try:
        stream.settimeout(2.0)
        stream.sendto(b"ping", (db, 53))
        assert stream.recv(100), "audit mode must let the flow through"
        res = s.secnet("mode", net.name, "enforce")
        assert res.returncode == 0, res.stderr
        assert _mode(net) == "enforce"
        stream.settimeout(0.5)
        stream.sendto(b"after", (db, 53))
        try:
            got = stream.recv(100)
        except socket.timeout:
            got = None
    finally:
        stream.close()
    assert got is None, "an established forbidden flow went on after the switch to enforce"
    cells = _cells(cs, compiled, enforce=True)
    diff = s.diff_text(cells, s.matrix(cells))
    assert not diff, f"enforce mode after the switch:\n{diff}"
    bad = s.secnet("mode", net.name, "bogus")
    assert bad.returncode != 0 and "bogus" in bad.stderr and _mode(net) == "enforce"


@pytest.mark.exclusive
def test_mode_survives_a_restart_and_spoofing_is_dropped_in_audit_mode(make_network, run_container,
                                                                      nsprocs, backend):
    net, cs = _members(make_network, run_container, nsprocs, backend, "enforce")
    spoofer = run_container(net, "spoofer", labels={"secnet.segment": "web"}, cmd=s.SLEEP,
                            cap_add=("NET_ADMIN",))
    s.wait_segments(net, {spoofer.name: "web"})
    assert s.secnet("mode", net.name, "audit").returncode == 0
    h.plugin_restart(kill=True)
    h.wait_until(lambda: s.secnet("mode", net.name).stdout.strip() == "audit", within=20,
                 what="audit mode after the restart")
    assert s.can(cs["db"], cs["api"], "tcp", 5432), "audit mode: a forbidden flow passes"
    fake = s.host_addr(net.subnet, 201)
    h.docker("exec", spoofer.name, "ip", "addr", "add", f"{fake}/24", "dev", "eth0")
    assert s.can(spoofer, cs["api"], "tcp", 8080, bind=s.addr_of(spoofer, 4)), "its own address works"
    assert not s.can(spoofer, cs["api"], "tcp", 8080, bind=fake), "a spoofed source got through"
