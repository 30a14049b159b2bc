"""What only the eBPF backend has: pins that outlive the daemon, adoption, the fast path."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time
import uuid

import pytest

from backend_lab import BackendLab, make_ebpf
from nsfixtures import NET_ID, lab, parallel, probe  # noqa: F401  (lab is a fixture)
from plugin.enforce.backend import BackendUnavailable, NetworkSpec
from segmentation.identities import MemoryAllocator
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules
from test_datapath_neutral import FEW, assert_all, echoes, open_stream, outcomes

pytestmark = pytest.mark.kernel


@pytest.fixture
def ebpf_lab(lab):
    blab = BackendLab(lab, make_ebpf, f"/sys/fs/bpf/secnet-test-{uuid.uuid4().hex[:8]}")
    try:
        yield blab
    finally:
        blab.close()


def tc_filters(lab, veth: str) -> str:
    return "".join(lab.exec("tc", "filter", "show", "dev", veth, point).stdout
                   for point in ("ingress", "egress"))


def test_check_host_passes_here(ebpf_lab):
    ebpf_lab.call(ebpf_lab.backend.check_host)


def test_check_host_names_the_option_when_it_cannot(tmp_path):
    from plugin.enforce.ebpf.backend import EbpfBackend
    broken = tmp_path / "broken.o"
    broken.write_bytes(b"not an object")
    with pytest.raises(BackendUnavailable, match=r"secnet\.backend=ebpf"):
        EbpfBackend(pin_root=str(tmp_path / "pins"), obj_path=str(broken)).check_host()


def test_enforcement_goes_on_while_the_daemon_is_down_and_is_adopted(ebpf_lab):
    web, api, late = ebpf_lab.lab.add(3)
    ebpf_lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "allow", extra_ports=[ebpf_lab.port(late)])
    stream = open_stream(web, api.ip4, 8080)
    try:
        ebpf_lab.call(ebpf_lab.backend.close)            # the daemon is gone
        root = os.path.join(ebpf_lab.pin_root, NET_ID[:12])
        assert {"policy", "conntrack", "from_container", "to_container"} <= set(os.listdir(root))
        cells = [(web, api, 4, "tcp", 8080), (web, api, 6, "tcp", 5432), (api, web, 4, "tcp", 8080)]
        assert parallel(probe, cells) == ["ok", "timeout", "timeout"]
        assert_all(outcomes([(web, late), (late, web)], FEW), "timeout")       # still pending
        ebpf_lab.backend = ebpf_lab.call(make_ebpf, ebpf_lab.pin_root)        # a new daemon
        assert ebpf_lab.call(ebpf_lab.backend.networks) == {NET_ID[:12]}
        ebpf_lab.change_ports((ebpf_lab.port(late), ebpf_lab.port(late, "web")))   # adopted from pins
        for c in (web, late):
            c.ip_cmd("neigh", "flush", "all")
        assert_all(outcomes([(web, late), (late, web)], FEW), "ok")
        ebpf_lab.call(ebpf_lab.backend.apply_network, ebpf_lab.net, ebpf_lab.policy,
                      [ebpf_lab.port(web, "web"), ebpf_lab.port(api, "api"), ebpf_lab.port(late, "web")])
        assert echoes(stream)                             # a reload keeps the conntrack map
        assert ebpf_lab.call(ebpf_lab.backend.drift, ebpf_lab.net, ebpf_lab.policy,
                             [ebpf_lab.port(web, "web"), ebpf_lab.port(api, "api"),
                              ebpf_lab.port(late, "web")]) == []
    finally:
        stream.close()


def test_drift_sees_a_detached_program_and_a_missing_entry(ebpf_lab):
    web, api = ebpf_lab.lab.add(2)
    pm = ebpf_lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    ports = [ebpf_lab.port(web, "web"), ebpf_lab.port(api, "api")]
    assert ebpf_lab.call(ebpf_lab.backend.drift, ebpf_lab.net, pm, ports) == []
    ebpf_lab.lab.exec("tc", "filter", "del", "dev", api.veth, "egress")
    lines = ebpf_lab.call(ebpf_lab.backend.drift, ebpf_lab.net, pm, ports)
    assert any(api.veth in line and "egress" in line for line in lines), lines
    ebpf_lab.call(ebpf_lab.backend.apply_network, ebpf_lab.net, pm, ports)
    assert ebpf_lab.call(ebpf_lab.backend.drift, ebpf_lab.net, pm, ports) == []
    ebpf_lab.call(_delete_one_policy_element, ebpf_lab.backend)
    lines = ebpf_lab.call(ebpf_lab.backend.drift, ebpf_lab.net, pm, ports)
    assert lines == ["policy: 1 missing entries"], lines


def _delete_one_policy_element(backend) -> None:
    from plugin.enforce.ebpf import libbpf, maps   # noqa: PLC0415 (reaching into the kernel on purpose)
    h = backend._nets[NET_ID[:12]].handle          # noqa: SLF001
    version = maps.STATE.unpack(libbpf.lookup(h.maps["state"], maps.U32.pack(0), maps.STATE.size))[0]
    key = next(k for k in libbpf.keys(h.maps["policy"], maps.POLICY_KEY.size)
               if maps.policy_unversioned(k)[0] == version)
    libbpf.delete(h.maps["policy"], key)


def test_remove_network_leaves_nothing(ebpf_lab):
    web, api = ebpf_lab.lab.add(2)
    ebpf_lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    assert "from_container" in tc_filters(ebpf_lab.lab, web.veth)
    ebpf_lab.call(ebpf_lab.backend.remove_network, NET_ID)
    assert not os.path.exists(os.path.join(ebpf_lab.pin_root, NET_ID[:12]))
    assert "bpf" not in tc_filters(ebpf_lab.lab, web.veth)
    assert ebpf_lab.call(ebpf_lab.backend.networks) == set()
    ebpf_lab.call(ebpf_lab.backend.remove_network, NET_ID)      # nothing there: fine
    assert os.listdir(ebpf_lab.pin_root) == []                   # the report buffer went too
    assert parallel(probe, [(api, web, 4, "tcp", 8080)]) == ["ok"]


def test_reports_flow_again_when_a_network_comes_back(ebpf_lab):
    events = []
    ebpf_lab.call(ebpf_lab.backend.watch_drops, events.append)
    web, api = ebpf_lab.lab.add(2)
    for _ in range(2):
        ebpf_lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
        events.clear()
        assert parallel(probe, [(api, web, 4, "tcp", 5432)]) == ["timeout"]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not any(e.port == 5432 for e in events):
            time.sleep(0.05)
        assert any(e.port == 5432 and e.reason == "no-rule" for e in events), events
        ebpf_lab.call(ebpf_lab.backend.remove_network, NET_ID)


def test_allowed_east_west_bypasses_the_bridge(ebpf_lab):
    """Judged flows go veth to veth (bpf_redirect_peer): the bridge forwards none of their packets."""
    web, api = ebpf_lab.lab.add(2)
    ebpf_lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
    ebpf_lab.lab.exec("nft", "add table bridge snfast; add chain bridge snfast seen "
                      "{ type filter hook forward priority 0; } ; add rule bridge snfast seen "
                      "ether type { ip, ip6 } meta l4proto tcp counter")
    assert parallel(probe, [(web, api, fam, "tcp", 8080) for fam in (4, 6) for _ in range(5)]) == ["ok"] * 10
    out = ebpf_lab.lab.exec("nft", "list", "chain", "bridge", "snfast", "seen").stdout
    assert "packets 0 " in out, out


def test_would_drops_of_audit_mode_are_counted_apart(ebpf_lab):
    web, api = ebpf_lab.lab.add(2)
    pm = ebpf_lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny", mode="audit")
    assert parallel(probe, [(api, web, 4, "tcp", 8080)]) == ["ok"]
    would = ebpf_lab.call(ebpf_lab.backend.would_drop, ebpf_lab.net)
    ids = pm.identities
    assert would.reasons["no-rule"][0] >= 1 and would.dropped[(ids["api"], ids["web"])][0] >= 1
    assert "no-rule" not in ebpf_lab.counters().reasons


def test_two_networks_share_the_report_buffer_and_not_their_maps(ebpf_lab):
    a1, a2, b1, b2 = ebpf_lab.lab.add(4)
    events = []
    ebpf_lab.call(ebpf_lab.backend.watch_drops, events.append)
    ebpf_lab.apply("x->y:tcp/8080", {a1: "x", a2: "y"}, "deny")
    other = NetworkSpec(id="0be" + "1" * 61, bridge="snbr0")
    ids = MemoryAllocator().allocate(other.id, ["x", "y"])
    pm = compile_policy_map(NetworkOptions(rules=parse_rules("y->x:tcp/8080"), intra="deny"), ids)
    ports = [_with_identity(ebpf_lab.port(b1, "x"), ids["x"]),
             _with_identity(ebpf_lab.port(b2, "y"), ids["y"])]
    ebpf_lab.call(ebpf_lab.backend.apply_network, other, pm, ports)
    try:
        cells = [(a1, a2, 4, "tcp", 8080), (a2, a1, 4, "tcp", 8080), (b1, b2, 4, "tcp", 8080),
                 (b2, b1, 4, "tcp", 8080)]
        assert parallel(probe, cells) == ["ok", "timeout", "timeout", "ok"]
        assert ebpf_lab.call(ebpf_lab.backend.networks) == {NET_ID[:12], other.id[:12]}
        time.sleep(0.5)
        assert {e.network for e in events if e.port == 8080} == {NET_ID[:12], other.id[:12]}
    finally:
        ebpf_lab.call(ebpf_lab.backend.remove_network, other.id)
    assert parallel(probe, [(a1, a2, 4, "tcp", 8080)]) == ["ok"]


def _with_identity(port, identity):
    return dataclasses.replace(port, identity=identity)


def test_docker_forward_drop_lets_through_what_the_programs_passed(ebpf_lab, tmp_path):
    """With Docker's FORWARD policy DROP and secnet's DOCKER-USER rules, bridged
    traffic passes only with the mark the programs set (fail closed without them)."""
    from plugin.kernel.dockerfw import DockerFirewall   # noqa: PLC0415 (kernel-tier only)
    lab = ebpf_lab.lab
    wrappers = []
    for binary in ("iptables", "ip6tables"):
        path = tmp_path / binary
        path.write_text(f'#!/bin/sh\nexec ip netns exec {lab.host} {binary} "$@"\n')
        path.chmod(0o755)
        wrappers.append(str(path))
        lab.exec(binary, "-P", "FORWARD", "DROP")
    DockerFirewall(binaries=tuple(wrappers)).ensure("snbr0", NET_ID)
    web, api = lab.add(2)
    ebpf_lab.apply("web->api:tcp/8080, web->api:udp/53", {web: "web", api: "api"}, "deny")
    cells = [(web, api, fam, proto, port) for fam in (4, 6) for proto, port in (("tcp", 8080), ("udp", 53))]
    assert parallel(probe, cells + [(api, web, 6, "tcp", 8080)]) == ["ok"] * 4 + ["timeout"]
    counted = lab.exec("ip6tables", "-vnL", "DOCKER-USER").stdout
    assert any(" ACCEPT " in line and int(line.split()[0]) > 0 for line in counted.splitlines()[2:]), \
        counted                                     # neighbour discovery crossed FORWARD, marked


def test_with_secnets_own_nat_chains(ebpf_lab, tmp_path):
    """NAT from plugin.enforce.ebpf.nat (the nftables backend's chains): a published
    port from outside and from a member (hairpin), with egress denied."""
    from plugin.enforce.ebpf.nat import render_nat   # noqa: PLC0415
    from test_datapath_northsouth import gateway, setup_outside   # noqa: PLC0415
    lab = ebpf_lab.lab
    web, api = lab.add(2)
    host, outside = setup_outside(ebpf_lab, web, api)
    ebpf_lab.published = {web.index: (("tcp", "", 18080, 8080),)}
    ebpf_lab.apply("", {web: "web", api: "api"}, "deny", egress="deny")
    ports = [ebpf_lab.port(web, "web"), ebpf_lab.port(api, "api")]
    script = render_nat(NET_ID, "snbr0", ["10.236.0.0/24", "fd00:236::/64"], False, ports)
    res = subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], input=script, text=True,
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stderr
    published = gateway(4)
    cells = [(outside, published, 4, "tcp", 18080), (api, published, 4, "tcp", 18080),
             (outside, web, 4, "tcp", 8080), (api, published, 4, "tcp", 9999)]
    assert parallel(probe, cells) == ["ok", "ok", "timeout", "timeout"]
