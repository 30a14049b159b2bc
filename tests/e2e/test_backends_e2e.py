"""Both datapaths on one daemon, end to end: an nftables network and an eBPF
network (`secnet.backend`) side by side, across a kill -9 and a restart of the
daemon, what an eBPF network leaves behind when it is removed, and an eBPF
member's tc hooks changed behind the daemon's back (back within a second), and a
member's veth taken off its bridge (back within a second, both backends)."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

import helpers as h
import seg_helpers as s

BACKEND_NAMES = ("nftables", "ebpf")
POLICY = "web->api:tcp/8080"
PINS = "/sys/fs/bpf/secnet"


def cell(src, dst, port, fam, expected, tag) -> dict:
    proto = "tcp" if port else "icmp"
    return {"key": f"{tag}: {src.name}->{dst.name} {proto}/{port} v{fam}", "src": src, "dst": dst,
            "proto": proto, "port": port, "family": fam, "expected": expected}


def assert_cells(cells: list) -> None:
    observed = s.matrix(cells)
    diff = s.diff_text(cells, observed)
    assert not diff, f"observed != expected in {len(diff.splitlines())} of {len(cells)} cells:\n{diff}"


def segmented(make_network, run_container, backend: str):
    """A dual-stack network of ``backend`` with web, api and db serving tcp/8080."""
    net = s.seg_network(make_network, f"sn-both-{backend[:4]}",
                        opts={"secnet.allow": POLICY, "secnet.backend": backend})
    cs = s.run_many(run_container, net, {"w": {"secnet.segment": "web"}, "a": {"secnet.segment": "api"},
                                         "d": {"secnet.segment": "db"}}, cmd=h.listen_cmd(8080))
    s.wait_segments(net, {cs["w"].name: "web", cs["a"].name: "api", cs["d"].name: "db"})
    return net, cs


def isolation_cells(networks: dict, tag: str) -> list:
    out = []
    for backend, (_net, cs) in networks.items():
        w, a, d = cs["w"], cs["a"], cs["d"]
        for fam in (4, 6):
            t = f"{tag}, {backend}"
            out += [cell(w, a, 8080, fam, True, t), cell(d, a, 8080, fam, False, t),
                    cell(a, w, 8080, fam, False, t), cell(w, a, None, fam, False, t)]
    return out


@pytest.mark.exclusive
def test_a_restart_with_networks_of_both_backends_restores_both(make_network, run_container):
    networks = {b: segmented(make_network, run_container, b) for b in BACKEND_NAMES}
    for backend, (net, _cs) in networks.items():
        assert s.show_json(net)["backend"] == backend
    assert_cells(isolation_cells(networks, "before"))
    try:
        h.plugin_kill()
        assert_cells(isolation_cells(networks, "daemon down"))
    finally:
        h.plugin_start()
    assert_cells(isolation_cells(networks, "after restart"))

    # The restarted daemon drives both again: a new member is judged, a policy edit holds.
    late = []
    for backend, (net, cs) in networks.items():
        assert s.show_json(net)["backend"] == backend
        n = run_container(net, "late", labels={"secnet.segment": "web"}, cmd=h.listen_cmd(8080))
        s.wait_segments(net, {n.name: "web"})
        res = s.secnet("policy", net.name, "add", "db->api:tcp/8080")
        assert res.returncode == 0, res.stderr
        tag = f"restored, {backend}"
        late += [cell(n, cs["a"], 8080, 4, True, tag), cell(cs["d"], n, 8080, 4, False, tag),
                 cell(cs["d"], cs["a"], 8080, 4, True, tag), cell(cs["d"], cs["a"], 8080, 6, True, tag),
                 cell(cs["a"], cs["d"], 8080, 4, False, tag)]
    assert_cells(late)


def tc_filters(ifname: str, point: str = "ingress") -> str:
    res = subprocess.run(["tc", "filter", "show", "dev", ifname, point], capture_output=True,
                         text=True, check=False)
    return res.stdout


def ours_only(veth: str) -> bool:
    """Our two programs on ``veth`` (handle 1 at pref 1) and nothing else at pref 1."""
    got = {point: tc_filters(veth, point) for point in ("ingress", "egress")}
    return (all(line.count("handle 0x1") == 1 for line in got.values())
            and "from_container" in got["ingress"] and "to_container" in got["egress"]
            and not any("handle 0x2" in text for text in got.values()))


def back_after(veth: str, *tamper: list) -> float:
    """Run the ``tamper`` commands, then seconds until :func:`ours_only` holds again
    (polled every 10 ms; fails after 1 s)."""
    for cmd in tamper:
        h.run(cmd)
    started = time.monotonic()
    while not ours_only(veth):
        assert time.monotonic() - started < 1.0, f"{veth}: not repaired within 1 s: {tc_filters(veth)}"
        time.sleep(0.01)
    return time.monotonic() - started


def test_an_ebpf_members_hooks_changed_behind_the_daemons_back_are_repaired_within_a_second(
        make_network, run_container):
    """The daemon follows tc notifications (plugin.enforce.ebpf.hookwatch): our program
    deleted, the clsact qdisc deleted, a foreign filter put before ours at our priority."""
    net = s.seg_network(make_network, "sn-ebpf-tc", opts={"secnet.allow": POLICY, "secnet.backend": "ebpf"})
    c = run_container(net, "c", labels={"secnet.segment": "web"})
    veth = c.veth()["ifname"]
    assert ours_only(veth), tc_filters(veth)
    took = [back_after(veth, ["tc", "filter", "del", "dev", veth, "ingress"]),
            back_after(veth, ["tc", "qdisc", "del", "dev", veth, "clsact"]),
            back_after(veth, ["tc", "filter", "add", "dev", veth, "egress", "pref", "1", "handle", "2",
                              "bpf", "da", "bytecode", "1,6 0 0 0,"])]
    print("repaired after (s):", [round(t, 3) for t in took])


def master_of(ifname: str) -> str:
    out = h.run(["ip", "-j", "link", "show", "dev", ifname]).stdout
    return json.loads(out)[0].get("master", "")


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_a_members_veth_taken_off_its_bridge_is_put_back_within_a_second(make_network, run_container,
                                                                         backend_name):
    """The daemon follows link notifications (plugin.driver.portwatch): `ip link set V
    nomaster` on a member's veth; it is back on the network's bridge within a second,
    and the policy holds as before (allowed answers, denied does not)."""
    net, cs = segmented(make_network, run_container, backend_name)
    veth = cs["a"].veth()["ifname"]
    bridge = master_of(veth)
    assert bridge
    h.run(["ip", "link", "set", veth, "nomaster"])
    started = time.monotonic()
    while master_of(veth) != bridge:
        assert time.monotonic() - started < 1.0, f"{veth}: not back on {bridge} within 1 s"
        time.sleep(0.01)
    print("back on the bridge after (s):", round(time.monotonic() - started, 3))
    assert_cells(isolation_cells({backend_name: (net, cs)}, "veth put back"))


def test_an_ebpf_network_rm_leaves_no_pins_programs_or_nat_table(make_network, run_container):
    net = s.seg_network(make_network, "sn-ebpf-rm", opts={"secnet.allow": POLICY, "secnet.backend": "ebpf"})
    c = run_container(net, "c", labels={"secnet.segment": "web"})
    veth = c.veth()["ifname"]
    pins = os.path.join(PINS, net.id[:12])
    assert {"from_container", "to_container", "policy", "conntrack"} <= set(os.listdir(pins))
    assert "from_container" in tc_filters(veth), f"no program on {veth}"
    tables = h.run(["nft", "list", "tables"]).stdout
    assert net.id[:12] in tables, tables   # the NAT-only table of the eBPF network
    h.docker("rm", "-f", c.name)
    h.wait_until(lambda: c.veth() is None, 10, f"veth of removed {c.name} to go")
    h.docker("network", "rm", net.name)
    assert not os.path.exists(pins), os.listdir(pins)
    assert net.id[:12] not in h.run(["nft", "list", "tables"]).stdout
