"""What only the nftables backend has (its own mechanics, not shared behaviour):
an edit is one transaction of set elements, rules never change for a policy
edit, the tables' drift is found rule by rule and element by element (and a
delta over a drifted element rebuilds), the fallback path through ``nft``,
NFLOG's group, and failing closed behind Docker's DOCKER-USER without the
tables. Every test here is ``[nftables]`` only."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time

import pytest

from nsfixtures import NET_ID, InNamespace, lab, only, sh  # noqa: F401  (lab is a fixture)
import packets
from packets import echoes, open_stream, probe_tcp
from plugin.enforce.backend import BackendError
from plugin.enforce.nftables import NftBackend, nflog, ruleset
from plugin.enforce.nftables.drops import NFLOG_GROUP
from plugin.kernel import netns
from plugin.enforce.hostfw.dockerfw import DockerFirewall
from plugin.kernel.links import port_group
from plugin.kernel.nftwatch import NftWatcher
from segmentation.options import parse_network_options

pytestmark = [pytest.mark.kernel, only("nftables")]


def rules_text(lab) -> str:
    """Both tables' rules and set declarations, without elements and counter values."""
    return "".join(lab.nft("-t", "-s", "list", "table", fam, lab.table).stdout for fam in ("inet", "bridge"))


class Generations:
    """Counts the transactions committed in the lab's namespace (``nft monitor``)."""

    def __init__(self, lab):
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.host, "nft", "monitor"],
                                     stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)

    def stop(self) -> list:
        time.sleep(0.3)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=5)
        return out.splitlines()


def ids(lab) -> dict:
    return lab.allocator.identities(NET_ID)


def test_one_rule_edit_is_one_transaction_of_elements(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    before = rules_text(lab)
    watch = Generations(lab)
    lab.update("web->api:tcp/8080 web->api:tcp/5432")
    lines = watch.stop()
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432)] == ["ok", "ok"]
    assert rules_text(lab) == before                      # no rule changed
    assert sum("new generation" in line for line in lines) == 1, lines
    changes = [line for line in lines if line.startswith(("add", "delete"))]
    assert changes and all(" element " in line for line in changes), changes


def test_a_new_segment_a_join_and_mode_switches_change_only_elements(lab):
    web, api, db = lab.add(3)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    before = rules_text(lab)
    lab.update("web->api:tcp/8080 web->db:tcp/5432")
    lab.move(db, "db")
    lab.update(mode="audit")
    lab.update(mode="enforce", egress="deny")
    assert rules_text(lab) == before


def test_a_join_that_brings_a_new_segment_is_one_transaction(lab):
    """apply_policy with endpoint changes (the eBPF backend's apply_policy takes none)."""
    web, api, db = lab.add(3)
    lab.apply("web->*:tcp/5432", {web: "web", api: "api"}, intra="deny")
    new = lab.compile(lab.options, {web: "web", api: "api", db: "db"})   # allocates db's identity
    lab.policy, delta = new, lab.policy.delta(new)
    lab.members[db] = lab.port(db, "db")
    watch = Generations(lab)
    lab.backend.apply_policy(lab.net, delta, [(None, lab.members[db])])
    lines = watch.stop()
    assert sum("new generation" in line for line in lines) == 1, lines
    assert [probe_tcp(web, db.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
    assert lab.drift() == []


def test_a_new_segments_join_from_create_endpoint_asks_for_no_interface_group(lab):
    """CreateEndpoint of a join that brings a segment: its entries and its port in one
    transaction with ``grouped=True`` (the link writer, plugin.kernel.links, makes the veth
    in the network's interface group right after it): no group request of the backend's
    (the device is not there yet: it found nothing and cost a netlink lookup per join).
    Once the link is in the group, as the link writer leaves it, the port is judged as
    a member's and nothing drifts. Without ``grouped`` the backend still sets the group."""
    web, api, db, extra = lab.add(4)
    lab.apply("web->*:tcp/5432", {web: "web", api: "api"}, intra="deny")
    groups, asked = lab.backend.obj.groups, []
    real_ensure = groups.ensure
    groups.ensure = lambda bridge, veths: asked.append([n for (n,) in veths]) or real_ensure(bridge, veths)
    try:
        for box, segment, grouped in ((db, "db", True), (extra, "extra", False)):
            new = lab.compile(lab.options, {web: "web", api: "api", db: "db", extra: segment})
            lab.policy, delta = new, lab.policy.delta(new)
            lab.members[box] = lab.port(box, segment)
            lab.backend.apply_policy(lab.net, delta, [(None, lab.members[box])], policy=new, grouped=grouped)
            if grouped:   # what the link writer does in the same request that makes the pair
                sh("ip", "-n", lab.host, "link", "set", box.veth, "group", str(port_group(lab.net.bridge)))
    finally:
        groups.ensure = real_ensure
    assert asked == [[extra.veth]]
    assert [probe_tcp(web, db.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
    assert [probe_tcp(web, extra.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
    assert lab.drift() == []


def test_an_edit_alone_leaves_established_flows_to_the_reconciler(lab):
    """The division of labour: the tables judge new flows only; ending the
    established ones a change denies is conntrack pruning's job (the lab does it
    in ``end_denied_flows``, as the reconciler does)."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    kept, cut = open_stream(web, api.ip4, 8080), open_stream(web, api.ip4, 8080)
    try:
        new = lab.compile(parse_network_options({"secnet.allow": "web->api:tcp/5432"}), {})
        lab.backend.apply_policy(lab.net, lab.policy.delta(new))
        lab.policy = new
        assert probe_tcp(web, api.ip4, 8080) == "timeout"      # new flows: judged at once
        assert echoes(kept)                                    # the established one goes on
        lab.end_denied_flows()
        assert not echoes(cut)
    finally:
        kept.close()
        cut.close()


def test_overlapping_ranges_are_cut_into_set_pieces(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/5000-8080 web->api:tcp/8080-9999", {web: "web", api: "api"}, intra="deny")
    pieces = lab.nft("list", "set", "inet", lab.table, "pol_range").stdout
    for piece in ("5000-8079", "8080 ", "8081-9999"):
        assert piece in pieces, pieces
    lab.update("web->api:tcp/8080-9999")
    assert "5000" not in lab.nft("list", "set", "inet", lab.table, "pol_range").stdout


def handle_of(lab, family: str, chain: str, text: str) -> int:
    listing = lab.nft("-a", "list", "chain", family, lab.table, chain).stdout
    line = next(line for line in listing.splitlines() if text in line)
    return int(line.rsplit("# handle", 1)[1])


def test_drift_names_the_chain_of_a_changed_rule(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    handle = handle_of(lab, "inet", "forward", "ip protocol igmp")
    lab.nft("replace", "rule", "inet", lab.table, "forward", "handle", str(handle),
            "tcp", "dport", "9999", "goto", "pass")
    problems = lab.drift()
    assert any("forward" in p for p in problems), problems


def test_a_delta_over_a_deleted_element_rebuilds(lab):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080 web->api:tcp/9999", {web: "web", api: "api"}, intra="deny")
    w, a = ids(lab)["web"], ids(lab)["api"]
    lab.nft("delete", "element", "inet", lab.table, "pol_port", f"{{ {w:#x} . {a:#x} . tcp . 8080 }}")
    problems = lab.drift()
    assert problems and all("pol_port" in p and "missing" in p for p in problems), problems
    # 8080 goes, 9999 stays (the set is not flushed): deleting 8080 is refused, it rebuilds
    lab.update("web->api:tcp/9999 web->api:tcp/5432", repair_ok=True)
    assert lab.backend.repairs == 1
    assert lab.drift() == []
    assert [probe_tcp(web, api.ip4, p) for p in (5432, 9999, 8080)] == ["ok", "ok", "timeout"]


def test_a_set_that_replaces_every_rule_flushes_what_the_kernel_holds(lab):
    """Every element of pol_port replaced: the set is flushed in the delta's transaction,
    so an element the kernel lost is no refusal (no rebuild) and one added behind the
    backend's back goes too (fail closed); the new rule is in force, the old ones not."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080 web->api:tcp/9999", {web: "web", api: "api"}, intra="deny")
    w, a = ids(lab)["web"], ids(lab)["api"]
    lab.nft("delete", "element", "inet", lab.table, "pol_port", f"{{ {w:#x} . {a:#x} . tcp . 8080 }}")
    lab.nft("add", "element", "inet", lab.table, "pol_port", f"{{ {w:#x} . {a:#x} . tcp . 7000 }}")
    watch = Generations(lab)
    lab.update("web->api:tcp/5432")
    lines = watch.stop()
    assert lab.backend.repairs == 0 and sum("new generation" in line for line in lines) == 1, lines
    held = lab.nft("list", "set", "inet", lab.table, "pol_port").stdout
    assert "5432" in held and "7000" not in held and "9999" not in held, held
    assert lab.drift() == []
    assert [probe_tcp(web, api.ip4, p) for p in (5432, 8080, 9999)] == ["ok", "timeout", "timeout"]


def test_another_networks_tables_are_no_drift(lab, tmp_path):
    """Two networks' tables have the same chain names; the kernel dumps chains of every
    table of a family (the table attribute filters rules and sets, not chains), so drift
    must judge only the network's own."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    other = "f" * 64
    script = tmp_path / "other.nft"
    spec = dataclasses.replace(lab.net, id=other, bridge="snother0", subnets=("10.239.254.0/24",))
    script.write_text(ruleset.skeleton_script(other, spec))
    lab.nft("-f", str(script))
    try:
        assert lab.drift() == []
        assert probe_tcp(web, api.ip4, 8080) == "ok"
    finally:
        script.write_text(ruleset.delete_script(other))
        lab.nft("-f", str(script), check=False)


def heard_within(got: list, seconds: float) -> None:
    """Wait until the watcher's subscriber has collected something in ``got``, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_watcher_hears_others_changes_but_not_the_backends_own_deltas(lab):
    """The element writer's notifications (one per element of an edit) are dropped by a
    socket filter on the watcher's socket; a foreign ``nft`` change still arrives."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    with packets.netns(lab.host):
        watcher = NftWatcher().start()
    got = []
    watcher.subscribe(got.append, lambda e: e.table == lab.table)
    try:
        for portid in lab.backend.own_ports():
            watcher.ignore_port(portid)
        lab.update(" ".join(f"web->api:tcp/{p}" for p in range(9000, 9200)))   # 200 elements
        time.sleep(0.5)
        assert got == []
        assert [probe_tcp(web, api.ip4, p) != "timeout" for p in (9000, 8080)] == [True, False]
        w, a = ids(lab)["web"], ids(lab)["api"]
        lab.nft("delete", "element", "inet", lab.table, "pol_port", f"{{ {w:#x} . {a:#x} . tcp . 9000 }}")
        heard_within(got, 3)
        assert [(e.kind, e.object, e.name) for e in got] == [("delete", "element", "pol_port")]
    finally:
        watcher.stop()


def test_a_large_edit_is_sent_outside_the_group_and_a_foreign_commit_then_is_a_resync(lab):
    """An edit of QUIET_MIN elements or more leaves NFNLGRP_NFTABLES for its batch (the
    kernel then builds no notification per element); a foreign commit inside that window
    is not announced, so the watcher gets one ``resync`` instead; afterwards foreign
    changes are heard again."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    with packets.netns(lab.host):
        watcher = NftWatcher().start()
    got = []
    watcher.subscribe(got.append, lambda e: e.kind == "resync" or e.table in (lab.table, "snforeign"))
    try:
        for portid in lab.backend.own_ports():
            watcher.ignore_port(portid)
        lab.backend.quiet_batches(watcher)
        lab.update(" ".join(f"web->api:tcp/{p}" for p in range(9000, 9600)))   # 600 elements
        time.sleep(0.5)
        assert (watcher.pauses, got) == (1, [])
        assert [probe_tcp(web, api.ip4, p) != "timeout" for p in (9599, 8080)] == [True, False]

        paused = watcher.pause

        def pause_then_foreign_commit():
            paused()
            lab.nft("add", "table", "inet", "snforeign")
        watcher.pause = pause_then_foreign_commit
        lab.update(" ".join(f"web->api:tcp/{p}" for p in range(10000, 10600)))
        heard_within(got, 3)
        time.sleep(0.3)
        assert [(e.kind, e.table) for e in got] == [("resync", "")]
        assert probe_tcp(web, api.ip4, 10599) != "timeout"

        del got[:]
        w, a = ids(lab)["web"], ids(lab)["api"]
        lab.nft("delete", "element", "inet", lab.table, "pol_port", f"{{ {w:#x} . {a:#x} . tcp . 10000 }}")
        heard_within(got, 3)
        assert [(e.kind, e.object, e.name) for e in got] == [("delete", "element", "pol_port")]
    finally:
        watcher.stop()
        lab.nft("delete", "table", "inet", "snforeign", check=False)


def test_drift_reports_missing_tables(lab):
    web, = lab.add(1)
    lab.apply("", {web: "web"})
    lab.nft("delete", "table", "bridge", lab.table)
    assert any("missing" in p for p in lab.drift())


def test_tables_missing_fail_closed_behind_docker_user(lab):
    """With Docker's FORWARD policy DROP and secnet's DOCKER-USER rules, only what
    secnet's chain marked passes: without its tables, nothing does."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    for binary in ("iptables", "ip6tables"):
        lab.exec(binary, "-P", "FORWARD", "DROP")
    fw = InNamespace(lab.host, DockerFirewall)
    try:
        fw.ensure("snbr0", NET_ID)
        assert [probe_tcp(web, api.ip(f), 8080) for f in (4, 6)] == ["ok", "ok"]
        for family in ("inet", "bridge"):
            lab.nft("delete", "table", family, lab.table)
        assert [probe_tcp(web, api.ip(f), 8080) for f in (4, 6)] == ["timeout", "timeout"]
    finally:
        fw.shutdown_plain()


# --- a network's first write: create-only, one transaction -----------------------------------
RICH = ("web->api:tcp/5000-8080 web->api:tcp/8080-9999 web->api:udp/53 "
        "10.237.0.0/24->api:tcp/8080 [fd00:237::/64]->api:tcp/8080")


def listing(lab) -> list:
    """``nft -j list table`` of both tables, elements and counters included, but for each
    table's own handle (the namespace's count of tables ever made, not the table's content)."""
    out = []
    for family in ("inet", "bridge"):
        objects = json.loads(lab.nft("-j", "list", "table", family, lab.table).stdout)["nftables"]
        for o in objects:
            o.get("table", {}).pop("handle", None)
        out.append(objects)
    return out


class Scripts:
    """The scripts the lab's backend hands its runner, recorded (they still run)."""

    def __init__(self, lab):
        self.runner, self.scripts = lab.backend.obj.runner, []
        apply = self.runner.apply

        def recorded(script: str) -> None:
            self.scripts.append(script)
            apply(script)
        self.runner.apply = recorded

    def stop(self) -> list:
        del self.runner.apply
        return self.scripts


def test_a_new_networks_tables_are_created_as_a_replace_would_leave_them(lab):
    """No table there: one create-only transaction (no block, no delete: libnftables then
    reads no other network's tables); the kernel holds, object for object and handle for
    handle, what the replacing script leaves."""
    web, api = lab.add(2)
    scripts = Scripts(lab)
    try:
        lab.apply(RICH, {web: "web", api: "api"}, intra="deny",
                  published={api: (("tcp", "", 18080, 8080),)})
        created = listing(lab)   # (before any packet: counters and dynamic sets would differ)
        lab.backend.apply_network(lab.net, lab.policy, lab.ports())   # the tables are there: replaced
        replaced = listing(lab)
        assert [probe_tcp(web, api.ip(f), p) for f in (4, 6) for p in (8080, 22)] == ["ok", "timeout"] * 2
    finally:
        first, *_, last = scripts.stop()
    assert first.startswith(f"create table inet {lab.table}\n")
    assert "delete" not in first and f"table inet {lab.table} {{" not in first
    assert last.startswith(f"table inet {lab.table} {{ }}\ndelete table inet {lab.table}\n")
    assert any(o.get("element") or o.get("set", {}).get("elem") for o in created[0])   # elements compared too
    assert created == replaced


def test_a_table_made_between_the_check_and_the_create_makes_it_a_replace(lab):
    """The create is refused whole (EEXIST on ``create table``): then both tables are
    replaced, the stray one's content gone."""
    web, api = lab.add(2)
    backend, checks = lab.backend.obj, []
    exists = backend._tables_exist

    def late(network_id: str) -> bool:   # the first check finds none; one is made right after it
        checks.append(network_id)
        if len(checks) == 1:
            lab.nft("add", "table", "bridge", lab.table)
            lab.nft("add", "chain", "bridge", lab.table, "stray")
            return False
        return exists(network_id)
    backend._tables_exist = late
    try:
        lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    finally:
        del backend._tables_exist
    assert len(checks) == 2
    assert "stray" not in lab.nft("list", "table", "bridge", lab.table).stdout
    assert lab.drift() == []
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 22)] == ["ok", "timeout"]


def test_a_create_the_kernel_refuses_leaves_no_table(lab, monkeypatch):
    """Refused by the kernel at its last command: BackendError, and neither table is there."""
    web, = lab.add(1)
    whole = ruleset.create_script
    monkeypatch.setattr(ruleset, "create_script",
                        lambda *args: whole(*args) + f"create chain inet {lab.table} pass\n")
    with pytest.raises(BackendError, match="File exists"):
        lab.apply("", {web: "web"})
    assert lab.table not in lab.nft("list", "tables").stdout


def test_a_new_backend_checks_tables_an_earlier_one_wrote(lab):
    """After a daemon restart: nothing to repair when nothing changed, and a changed
    rule is still found (the reference comes from a scratch namespace)."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    fresh = InNamespace(lab.host, NftBackend)
    try:
        assert fresh.drift(lab.net, lab.policy, lab.ports()) == []
        handle = handle_of(lab, "bridge", "spoofing", "ether type arp return")
        lab.nft("delete", "rule", "bridge", lab.table, "spoofing", "handle", str(handle))
        assert any("spoofing" in p for p in fresh.drift(lab.net, lab.policy, lab.ports()))
    finally:
        fresh.shutdown()


def test_without_netlink_deltas_drift_and_counters_go_through_nft(lab):
    """The fallback path (nft scripts and JSON listings) gives the same answers."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, intra="deny")
    text = InNamespace(lab.host, lambda: NftBackend(netlink=False))
    try:
        text.apply_network(lab.net, lab.policy, lab.ports())
        old = lab.policy
        rules = "web->api:tcp/5000-5500 web->10.237.0.0/24:tcp/8080"
        new = lab.compile(parse_network_options({"secnet.allow": rules, "secnet.intra": "deny"}), {})
        text.apply_policy(lab.net, old.delta(new))
        assert text.repairs == 0 and text.drift(lab.net, new, lab.ports()) == []
        assert [probe_tcp(web, api.ip4, p) for p in (5432, 8080)] == ["ok", "timeout"]
        counters = text.counters(lab.net)
        assert sum(pk for pk, _b in counters.allowed.values()) >= 1
        assert counters.dropped[(ids(lab)["web"], ids(lab)["api"])][0] >= 1
        lab.nft("flush", "set", "inet", lab.table, "pol_range")
        assert any("pol_range" in p for p in text.drift(lab.net, new, lab.ports()))
    finally:
        text.shutdown()
    lab.policy = new


def test_nflog_group_is_exclusive_per_namespace(lab):
    lab.backend.watch_drops(lambda event: None)
    time.sleep(0.3)
    with pytest.raises(OSError):
        netns.run_in(f"/run/netns/{lab.host}", nflog.open_socket, NFLOG_GROUP)
