"""What only the eBPF backend has (its own mechanics, not shared behaviour): pins
that outlive the daemon and adoption, the verifier-loaded programs and their
removal, the shared report buffer, one generation per edit, the fast path,
Docker's FORWARD policy. Every test here is ``[ebpf]`` only; the behaviour
both backends share is proven on each by the other test modules."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time

import pytest

from nsfixtures import BRIDGE, NET_ID, lab, make_ebpf, only  # noqa: F401  (lab is a fixture)
from nsfixtures import InNamespace
from packets import FEW, assert_all, echoes, ns_socket, open_stream, outcomes, parallel, probe
from plugin.enforce.backend import BackendUnavailable, NetworkSpec
from segmentation.identities import MemoryAllocator
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules

pytestmark = pytest.mark.kernel
ebpf = only("ebpf")




def tc_filters(lab, veth: str) -> str:
    return "".join(lab.exec("tc", "filter", "show", "dev", veth, point).stdout
                   for point in ("ingress", "egress"))


@ebpf
def test_check_host_passes_here(lab):
    lab.backend.check_host()


def test_check_host_names_the_option_when_it_cannot(tmp_path):
    from plugin.enforce.ebpf.backend import EbpfBackend   # noqa: PLC0415
    broken = tmp_path / "broken.o"
    broken.write_bytes(b"not an object")
    with pytest.raises(BackendUnavailable, match=r"secnet\.backend=ebpf"):
        EbpfBackend(pin_root=str(tmp_path / "pins"), obj_path=str(broken)).check_host()


@ebpf
def test_enforcement_goes_on_while_the_daemon_is_down_and_is_adopted(lab):
    web, api, late = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "allow", extra_ports=[lab.port(late)])
    stream = open_stream(web, api.ip4, 8080)
    try:
        lab.backend.shutdown()                            # the daemon is gone
        root = os.path.join(lab.pin_root, NET_ID[:12])
        assert {"policy", "conntrack", "from_container", "to_container"} <= set(os.listdir(root))
        cells = [(web, api, 4, "tcp", 8080), (web, api, 6, "tcp", 5432), (api, web, 4, "tcp", 8080)]
        assert parallel(probe, cells) == ["ok", "timeout", "timeout"]
        assert_all(outcomes([(web, late), (late, web)], FEW), "timeout")       # still pending
        lab.backend = InNamespace(lab.host, lambda: make_ebpf(lab.pin_root))  # a new daemon
        assert lab.backend.networks() == {NET_ID[:12]}
        lab.move(late, "web")                             # adopted from the pins
        for c in (web, late):
            c.ip_cmd("neigh", "flush", "all")
        assert_all(outcomes([(web, late), (late, web)], FEW), "ok")
        lab.repair()
        assert echoes(stream)                             # a reload keeps the conntrack map
        assert lab.drift() == []
    finally:
        stream.close()


@ebpf
def test_a_conntrack_map_of_an_older_layout_is_made_anew(lab):
    """A network pinned by a build whose flow entries were 16 bytes (before the fast
    path remembered sender and destination) loads: its conntrack is replaced."""
    web, api = lab.add(2)
    root = os.path.join(lab.pin_root, NET_ID[:12])
    os.makedirs(root, exist_ok=True)
    pin = os.path.join(root, "conntrack")
    subprocess.run(["bpftool", "map", "create", pin, "type", "lru_hash", "key", "40", "value", "16",
                    "entries", "64", "name", "conntrack"], check=True)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    shown = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", pin], check=True,
                                      capture_output=True, text=True).stdout)
    assert shown["bytes_value"] == 48 and shown["max_entries"] == 65536
    assert parallel(probe, [(web, api, 4, "tcp", 8080), (api, web, 4, "tcp", 8080)]) == ["ok", "timeout"]


@ebpf
def test_drift_names_a_detached_program_and_the_map_of_a_missing_entry(lab):
    web, api = lab.add(2)
    pm = lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    lab.exec("tc", "filter", "del", "dev", api.veth, "egress")
    lines = lab.drift()
    assert any(api.veth in line and "egress" in line for line in lines), lines
    lab.repair()
    assert lab.drift() == []
    from tamper import delete_policy_entry   # noqa: PLC0415
    delete_policy_entry(lab, next(e for e in pm.entries if e.rule != "intra"))
    assert lab.drift() == ["policy: 1 missing entries"]


@ebpf
def test_drift_names_a_flushed_nat_table_and_the_repair_writes_it_again(lab):
    # an eBPF network's published ports and masquerade live in its NAT-only nft table;
    # `nft flush ruleset` (a firewall reload) takes it, and drift must say so (U20-F3)
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    table = "secnet_" + NET_ID[:12]
    assert "map pub4" in lab.nft("list", "table", "inet", table).stdout
    lab.nft("flush", "ruleset")
    lines = lab.drift()
    assert len(lines) == 1 and lines[0].startswith(f"nat table {table} missing"), lines
    lab.repair()
    assert lab.drift() == []
    assert "map pub4" in lab.nft("list", "table", "inet", table).stdout


@ebpf
def test_remove_network_leaves_nothing(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
    assert "from_container" in tc_filters(lab, web.veth)
    lab.backend.remove_network(NET_ID)
    assert not os.path.exists(os.path.join(lab.pin_root, NET_ID[:12]))
    assert "bpf" not in tc_filters(lab, web.veth)
    assert lab.backend.networks() == set()
    assert lab.table not in lab.nft("list", "tables").stdout        # the NAT table went too
    lab.backend.remove_network(NET_ID)      # nothing there: fine
    assert os.listdir(lab.pin_root) == []   # the report buffer went too
    assert parallel(probe, [(api, web, 4, "tcp", 8080)]) == ["ok"]


@ebpf
def test_reports_flow_again_when_a_network_comes_back(lab):
    events = []
    lab.backend.watch_drops(events.append)
    web, api = lab.add(2)
    for _ in range(2):
        lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
        events.clear()
        assert parallel(probe, [(api, web, 4, "tcp", 5432)]) == ["timeout"]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not any(e.port == 5432 for e in events):
            time.sleep(0.05)
        assert any(e.port == 5432 and e.reason == "no-rule" for e in events), events
        lab.backend.remove_network(NET_ID)


def _generation(backend) -> int:
    from plugin.enforce.ebpf import libbpf, maps   # noqa: PLC0415 (reading the kernel on purpose)
    handle = backend._nets[NET_ID[:12]].handle     # noqa: SLF001
    return maps.STATE.unpack(libbpf.lookup(handle.maps["state"], maps.U32.pack(0), maps.STATE.size))[1]


@ebpf
def test_one_rule_edit_is_one_generation_and_keeps_the_programs(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
    filters = {c.veth: tc_filters(lab, c.veth) for c in (web, api)}
    before = lab.backend.call(_generation, lab.backend.obj)
    lab.update("web->api:tcp/8080 web->api:tcp/5432")
    assert lab.backend.call(_generation, lab.backend.obj) == before + 1
    assert {c.veth: tc_filters(lab, c.veth) for c in (web, api)} == filters   # same programs
    assert parallel(probe, [(web, api, 4, "tcp", 5432)]) == ["ok"]


def _versions(backend) -> tuple:
    """(policy map content of version 0, of version 1, the leveling pending or not)."""
    st = backend._nets[NET_ID[:12]]                                      # noqa: SLF001
    return backend._dump(st.handle, "policy", 0), backend._dump(st.handle, "policy", 1), st.level is not None


def _wait_levelled(lab, within: float = 20.0) -> None:
    """Wait until the two versions are level: an apply may leave the levelling of the
    version not in force to a thread (plugin.enforce.ebpf.backend, LEVEL_LATER), which
    clears ``level`` before it writes."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        zero, one, pending = lab.backend.call(_versions, lab.backend.obj)
        if not pending and zero == one:
            return
        time.sleep(0.05)


@ebpf
def test_an_edit_is_in_force_before_the_other_version_is_levelled(lab, monkeypatch):
    """apply_policy returns once the new policy is in force (written to the version not in
    force, then the flip); levelling the other version comes after, and the next edit does
    it first if it is still pending: each edit's rules, and only those, are enforced."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
    # (else, late under load, the first apply's levelling levels the edit below and
    # nothing is pending any more)
    _wait_levelled(lab)
    from plugin.enforce.ebpf import backend as eb   # noqa: PLC0415
    monkeypatch.setattr(eb, "LEVEL_LATER", 0)                # every leveling left for later
    pending: list = []
    lab.backend.obj.later = pending.append                  # and held back
    lab.update("web->api:tcp/5432")
    old, new, waiting = lab.backend.call(_versions, lab.backend.obj)
    assert waiting and old != new                            # one version holds the old policy still
    cells = [(web, api, 4, "tcp", 5432), (web, api, 4, "tcp", 8080), (web, api, 6, "tcp", 8080)]
    assert parallel(probe, cells) == ["ok", "timeout", "timeout"]
    lab.update("web->api:tcp/9999")                          # levels the last edit's first
    cells = [(web, api, 4, "tcp", 9999), (web, api, 6, "tcp", 5432), (web, api, 4, "tcp", 8080)]
    assert parallel(probe, cells) == ["ok", "timeout", "timeout"]
    lab.backend.call(pending[-1])                            # the thread's turn
    old, new, waiting = lab.backend.call(_versions, lab.backend.obj)
    assert not waiting and old == new
    assert lab.drift() == []


@ebpf
def test_allowed_east_west_bypasses_the_bridge(lab):
    """Judged flows go veth to veth (bpf_redirect_peer): the bridge forwards none of their packets."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny")
    lab.exec("nft", "add table bridge snfast; add chain bridge snfast seen "
             "{ type filter hook forward priority 0; } ; add rule bridge snfast seen "
             "ether type { ip, ip6 } meta l4proto tcp counter")
    assert parallel(probe, [(web, api, fam, "tcp", 8080) for fam in (4, 6) for _ in range(5)]) == ["ok"] * 10
    out = lab.exec("nft", "list", "chain", "bridge", "snfast", "seen").stdout
    assert "packets 0 " in out, out


def _stamp_replies_ahead(backend, ahead_ns: int) -> int:
    """Stamp every reply-direction entry of both flow tables (a TCP flow whose client has
    not spoken is in ct_new) ``ahead_ns`` past CLOCK_MONOTONIC; how many."""
    from plugin.enforce.ebpf import libbpf, maps, pins   # noqa: PLC0415 (writing the kernel's map on purpose)
    now, n = time.clock_gettime_ns(time.CLOCK_MONOTONIC), 0
    for table in pins.CT_MAPS:
        fd = backend._nets[NET_ID[:12]].handle.maps[table]   # noqa: SLF001
        for key in list(libbpf.keys(fd, maps.CT_KEY.size)):
            raw = libbpf.lookup(fd, key, maps.CT_VAL.size)
            fields = maps.CT_VAL.unpack(raw) if raw else None
            if fields and fields[2] & 1:                   # CT_REPLY
                libbpf.update(fd, key, maps.CT_VAL.pack(now + ahead_ns, *fields[1:]))
                n += 1
    return n


@ebpf
def test_a_reply_entry_stamped_ahead_of_the_clock_is_young(lab):
    """The fast path ages entries by the coarse clock, which trails ct_create's fine stamp by up
    to a tick: an entry "from the future" must count as young, not as expired -- else the reply
    of a one-way flow would be judged anew as the other way round, and denied. Both tables: a
    connection before its client spoke (in ct_new, the full path), and after (conntrack, the
    fast path)."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8181", {web: "web", api: "api"}, "deny")
    with ns_socket(api.ns, socket.AF_INET, socket.SOCK_STREAM) as server, \
            ns_socket(web.ns, socket.AF_INET, socket.SOCK_STREAM) as client:
        for s in (server, client):
            s.settimeout(3)
        server.bind((api.ip4, 8181))
        server.listen(1)
        client.connect((api.ip4, 8181))
        conn, _ = server.accept()
        with conn:
            for said in (b"first", b"again"):
                assert lab.backend.call(_stamp_replies_ahead, lab.backend.obj, 2_000_000_000) >= 1
                client.send(said)
                assert conn.recv(64) == said
                conn.send(said)
                assert client.recv(64) == said


@ebpf
def test_would_drops_of_audit_mode_are_counted_apart(lab):
    web, api = lab.add(2)
    pm = lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny", mode="audit")
    assert parallel(probe, [(api, web, 4, "tcp", 8080)]) == ["ok"]
    would = lab.backend.would_drop(lab.net)
    ids = pm.identities
    assert would.reasons["no-rule"][0] >= 1 and would.dropped[(ids["api"], ids["web"])][0] >= 1
    assert "no-rule" not in lab.counters().reasons


@ebpf
def test_two_networks_share_the_report_buffer_and_not_their_maps(lab):
    a1, a2, b1, b2 = lab.add(4)
    events = []
    lab.backend.watch_drops(events.append)
    lab.apply("x->y:tcp/8080", {a1: "x", a2: "y"}, "deny")
    other = NetworkSpec(id="0be" + "1" * 61, bridge=BRIDGE)
    ids = MemoryAllocator().allocate(other.id, ["x", "y"])
    pm = compile_policy_map(NetworkOptions(rules=parse_rules("y->x:tcp/8080"), intra="deny"), ids)
    ports = [dataclasses.replace(lab.port(b1), identity=ids["x"], segment="x"),
             dataclasses.replace(lab.port(b2), identity=ids["y"], segment="y")]
    lab.backend.apply_network(other, pm, ports)
    try:
        cells = [(a1, a2, 4, "tcp", 8080), (a2, a1, 4, "tcp", 8080), (b1, b2, 4, "tcp", 8080),
                 (b2, b1, 4, "tcp", 8080)]
        assert parallel(probe, cells) == ["ok", "timeout", "timeout", "ok"]
        assert lab.backend.networks() == {NET_ID[:12], other.id[:12]}
        time.sleep(0.5)
        assert {e.network for e in events if e.port == 8080} == {NET_ID[:12], other.id[:12]}
    finally:
        lab.backend.remove_network(other.id)
    assert parallel(probe, [(a1, a2, 4, "tcp", 8080)]) == ["ok"]


@ebpf
def test_docker_forward_drop_lets_through_what_the_programs_passed(lab):
    """With Docker's FORWARD policy DROP and secnet's DOCKER-USER rules, bridged
    traffic passes only with the mark the programs set (fail closed without them)."""
    from plugin.enforce.hostfw.dockerfw import DockerFirewall   # noqa: PLC0415 (kernel-tier only)
    for binary in ("iptables", "ip6tables"):
        lab.exec(binary, "-P", "FORWARD", "DROP")
    fw = InNamespace(lab.host, DockerFirewall)
    try:
        fw.ensure(BRIDGE, NET_ID)
    finally:
        fw.shutdown_plain()
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080, web->api:udp/53", {web: "web", api: "api"}, "deny")
    cells = [(web, api, fam, proto, port) for fam in (4, 6) for proto, port in (("tcp", 8080), ("udp", 53))]
    assert parallel(probe, cells + [(api, web, 6, "tcp", 8080)]) == ["ok"] * 4 + ["timeout"]
    counted = lab.exec("ip6tables", "-vnL", "DOCKER-USER").stdout
    assert any(" ACCEPT " in line and int(line.split()[0]) > 0 for line in counted.splitlines()[2:]), \
        counted                                     # neighbour discovery crossed FORWARD, marked
    lab.backend.remove_network(NET_ID)
    assert parallel(probe, cells[:1]) == ["timeout"]    # without the programs' mark: dropped


@ebpf
def test_a_join_that_brings_a_new_segment_goes_in_with_its_entries(lab):
    """apply_policy with endpoint changes: the new segment's entries, then its port."""
    web, api, db = lab.add(3)
    lab.apply("web->*:tcp/5432", {web: "web", api: "api"}, "deny")
    new = lab.compile(lab.options, {web: "web", api: "api", db: "db"})   # allocates db's identity
    lab.policy, delta = new, lab.policy.delta(new)
    lab.members[db] = lab.port(db, "db")
    lab.backend.apply_policy(lab.net, delta, [(None, lab.members[db])], policy=new)
    assert parallel(probe, [(web, db, 4, "tcp", 5432), (web, db, 4, "tcp", 8080)]) == ["ok", "timeout"]
    assert lab.drift() == []


@ebpf
def test_a_set_of_hundreds_of_rules_goes_in_by_batches_and_leaves_no_drift(lab):
    """A set replacing 300 rules by 300 others writes its elements by batches
    (``libbpf.update_batch``/``delete_batch``): the maps then hold exactly the new policy."""
    web, api = lab.add(2)
    many = lambda base: " ".join(f"web->api:tcp/{base + k}" for k in range(300))   # noqa: E731
    lab.apply(many(10000), {web: "web", api: "api"}, "deny")
    lab.update(many(20000) + " web->api:tcp/8080")
    assert lab.drift() == []
    assert parallel(probe, [(web, api, 4, "tcp", 8080), (web, api, 4, "tcp", 10000)]) == ["ok", "timeout"]


def _delete_around_an_absent_key(backend) -> tuple:
    from plugin.enforce.ebpf import libbpf, maps   # noqa: PLC0415 (reading the kernel on purpose)
    fd, size = backend._nets[NET_ID[:12]].handle.maps["policy"], maps.POLICY_KEY.size   # noqa: SLF001
    present = list(libbpf.keys(fd, size))
    absent = maps.POLICY_KEY.pack(64, bytes([7]) + b"\xff" * 7)   # version 7: there are two, 0 and 1
    libbpf.delete_batch(fd, 3, present[0] + absent + present[1])
    return len(present), sorted(libbpf.keys(fd, size)) == sorted(present[2:])


@ebpf
def test_delete_batch_skips_an_absent_key_and_deletes_the_others(lab):
    web, api = lab.add(2)
    lab.apply(" ".join(f"web->api:tcp/{80 + k}" for k in range(5)), {web: "web", api: "api"}, "deny")
    _wait_levelled(lab)   # else a late levelling thread writes keys between the two reads
    count, rest_kept = lab.backend.call(_delete_around_an_absent_key, lab.backend.obj)
    assert count >= 3 and rest_kept
