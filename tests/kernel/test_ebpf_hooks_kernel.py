"""A network's datapath taken away behind the daemon's back is back within a second.

The daemon's watches run as it wires them (plugin.daemon.wiring): nftables
change notifications for an nftables network (``watch_nft_tables``), tc
notifications for an eBPF network (plugin.enforce.ebpf.hookwatch.HookWatch),
each feeding the reconciler, inside the lab's host namespace. A forbidden flow is probed the
whole time: it passes while the hole is open and must be dropped again within
:data:`WITHIN` seconds of the tampering -- the periodic pass (300 s) does not
count. Then drift is empty, the repair was one (its own notifications cause
no further one), and the policy holds both ways. The eBPF-only tests cover what only tc has, on one
veth: with ``secnet.egress=deny``, web -> outside is forbidden, and web's
datagrams to the outside are judged only by its veth's ingress program (their
replies, by its egress program: one hook gone is a one-way hole, so these
probes are one-way UDP datagrams counted where they arrive; the lab's host has
no other filter). They take that program away (``tc filter del``, ``tc qdisc
del ... clsact``), put a foreign filter before it, and check that the daemon's
own attaches (a join) cause no repair.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import struct
import time

import pytest

from nsfixtures import OUTSIDE4, NsKernel, lab, only, saved_network  # noqa: F401  (lab is a fixture)
from nsfixtures import endpoint_record as endpoint
from packets import netns, ns_socket, parallel, probe_tcp
from plugin.daemon.wiring import watch_nft_tables
from plugin.enforce.ebpf.hookwatch import HookWatch
from plugin.enforce.ebpf import libbpf
from plugin.enforce.reconciler import Reconciler
from plugin.kernel.conntrack import Flows
from plugin.kernel.nftsocket import in_initial_pid_namespace
from plugin.kernel.nftwatch import NftWatcher
from segmentation.rules import parse_rules
from tamper import HOLE_PORT, open_hole

pytestmark = pytest.mark.kernel
ebpf = only("ebpf")
RULES = "web->api:tcp/8080"
WITHIN = 1.0          # seconds from the tampering to the flow being dropped again (issue 12)
QUICK = 0.15          # a probe's timeout: a dropped SYN is a "timeout" this fast


class Watch:
    """The daemon's watch of the lab's backend, started in the lab's namespace; ``repairs``:
    how many repairs it made (eBPF: hooks put back; nftables: rewrites)."""

    def __init__(self, lab, rec):
        self.rec = rec
        with netns(lab.host):   # the sockets and the checking threads live there
            if lab.backend_name == "ebpf":
                self.hooks = HookWatch(rec, [lab.backend]).start()
                self.stops = [self.hooks.stop]
            else:
                watcher = NftWatcher().start()
                self.hooks, self.stops, self.watcher = None, [watcher.stop], watcher
                self.repair = watch_nft_tables(watcher, lambda: rec.reconcile(full=False), [lab.backend])
                self.stops.append(self.repair.stop)

    @property
    def repairs(self) -> int:
        return self.hooks.reattached + self.rec.repairs if self.hooks else self.rec.repairs

    def stop(self) -> None:
        for stop in self.stops:
            stop()


@pytest.fixture
def watched(lab, tmp_path):
    """(lab, state, reconciler, net, web, api, watch) with the network in force and the
    daemon's watch of its backend running; stopped after the test."""
    web, api = lab.add(2)
    state, net = saved_network(lab, str(tmp_path / "state"), RULES, web, api)
    net = dataclasses.replace(net, options=dataclasses.replace(net.options, egress="deny"))
    state.put_network(net)
    rec = Reconciler(state, {lab.backend_name: lab.backend}, flows=Flows(NsKernel(lab.host)))
    watch = None
    try:
        rec.network_added(net)
        watch = Watch(lab, rec)
        assert rec.drift(net) == [] and watch.repairs == 0
        yield lab, state, rec, net, web, api, watch
    finally:
        if watch is not None:
            watch.stop()
        state.close()


def dropped_again_after(src, dst_ip: str, port: int, started: float, until: float = 2.5) -> list:
    """Probe ``src`` -> ``dst_ip``:``port`` until ``until`` seconds after ``started``
    (an open hole is probed every 20 ms); returns ``[(seconds since started, outcome)]``."""
    seen = []
    while (now := time.monotonic() - started) < until:
        seen.append((round(now, 2), probe_tcp(src, dst_ip, port, timeout=QUICK)))
        if seen[-1][1] == "ok":
            time.sleep(0.02)
    return seen


ONE_WAY_PORT = 7777


def arrivals_after(src, dst, started: float, until: float = 2.5) -> list:
    """Send a UDP datagram from ``src`` to ``dst`` (a lab box) every 20 ms until ``until``
    seconds after ``started``; returns ``[(seconds since started when sent, "ok")]`` for
    those that arrived, and ``(t, "timeout")`` for the others."""
    with ns_socket(dst.ns, socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            ns_socket(src.ns, socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind((dst.ip4, ONE_WAY_PORT))
        rx.settimeout(0.3)
        sent = []
        while (now := time.monotonic() - started) < until:
            tx.sendto(f"{len(sent)}".encode(), (dst.ip4, ONE_WAY_PORT))
            sent.append(round(now, 2))
            time.sleep(0.02)
        arrived = set()
        try:
            while True:
                arrived.add(int(rx.recv(64)))
        except socket.timeout:
            pass
    return [(t, "ok" if i in arrived else "timeout") for i, t in enumerate(sent)]


def assert_closed_within(seen: list) -> None:
    """Every probe that started after WITHIN was dropped, and some were."""
    late = [outcome for t, outcome in seen if t >= WITHIN]
    passed = [t for t, outcome in seen if outcome == "ok"]
    assert late and set(late) == {"timeout"}, (
        f"still open after {WITHIN} s: passed {len(passed)} times, the last at {max(passed)} s; "
        f"after {WITHIN} s: {late[:5]}")


def assert_policy(web, api) -> None:
    cells = [(web, api.ip4, 8080), (api, web.ip4, 8080), (web, OUTSIDE4, 8080)]
    assert parallel(lambda a, b, p: probe_tcp(a, b, p), cells) == ["ok", "timeout", "timeout"]


def settled(rec, net, watch, repairs=(1,)) -> None:
    """Drift is gone and as many repairs were made as ``repairs`` allows: the repair's
    own attaches, announced too, caused no further one."""
    time.sleep(0.5)
    assert rec.drift(net) == []
    assert watch.repairs in repairs


def test_a_hole_in_the_datapath_is_closed_within_a_second(watched):
    """nftables: a rule of the forward chain turned into an accept; eBPF: our filters
    deleted from both veths (``tc filter del dev V ingress`` / ``egress``)."""
    lab, _state, rec, net, web, api, watch = watched
    started = time.monotonic()
    open_hole(lab, web, api)
    seen = dropped_again_after(web, api.ip4, HOLE_PORT, started)
    assert_closed_within(seen)
    settled(rec, net, watch)
    assert_policy(web, api)


@only("nftables")
def test_a_large_edit_causes_no_repair_and_a_hole_opened_after_it_is_closed(watched):
    """The reconciler's 700-element edit goes out with the watch out of the nftables group
    (no notification built per element: they are its own): no repair; the watch is back
    in the group, so a hole opened right after is heard and closed within a second."""
    lab, state, rec, net, web, api, watch = watched
    big = dataclasses.replace(net, options=dataclasses.replace(net.options, rules=parse_rules(
        RULES + " " + " ".join(f"web->api:tcp/{p}" for p in range(9000, 9700)))))
    state.put_network(big)
    rec.policy_changed(big)
    time.sleep(0.5)
    assert watch.watcher.pauses >= 1 and watch.repairs == 0
    assert probe_tcp(web, api.ip4, 9699) != "timeout"   # in force (no listener: refused)
    started = time.monotonic()
    open_hole(lab, web, api)
    assert_closed_within(dropped_again_after(web, api.ip4, HOLE_PORT, started))
    settled(rec, big, watch)


@only("nftables")
def test_the_daemons_own_whole_table_writes_cause_no_repair_check(watched):
    """A rewrite of the network's tables through libnftables in this process (as a create,
    a repair or an upgrade writes them) is the daemon's own: no repair pass runs; a
    foreign ``nft`` command's change still gets one."""
    lab, state, rec, net, web, api, watch = watched
    if not in_initial_pid_namespace():
        pytest.skip("the committing thread is named by the initial pid namespace's numbers")
    time.sleep(0.5)
    before = watch.repair.runs
    rec.reconcile(full=True)                 # writes every network's tables whole, as at start
    time.sleep(0.6)
    assert watch.repair.runs == before and watch.repairs == 0
    lab.nft("add", "chain", "inet", lab.table, "snforeign")   # a foreign command's change to our table
    deadline = time.monotonic() + 2
    while watch.repair.runs == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watch.repair.runs > before
    assert_policy(web, api)


@ebpf
@pytest.mark.parametrize("removal", [("filter", "ingress"), ("qdisc", "clsact")], ids=["filter", "clsact"])
def test_a_program_detached_from_a_members_veth_is_back_within_a_second(watched, removal):
    """``tc filter del dev V ingress`` (our program on that hook), ``tc qdisc del dev V
    clsact`` (both hooks with it)."""
    lab, _state, rec, net, web, api, watch = watched
    started = time.monotonic()
    lab.exec("tc", removal[0], "del", "dev", web.veth, removal[1])
    seen = arrivals_after(web, lab.outside, started)
    assert_closed_within(seen)
    settled(rec, net, watch)
    assert_policy(web, api)


def filters(lab, veth: str, point: str) -> str:
    return lab.exec("tc", "filter", "show", "dev", veth, point).stdout


PASS_ALL = "1,6 0 0 0,"   # classic BPF "ret #0": in direct-action mode TC_ACT_OK, pass


@ebpf
def test_a_foreign_filter_put_before_ours_is_deleted_within_a_second(watched):
    """cls_bpf runs a filter added at our priority before ours: its pass lets web's
    traffic out unjudged. Drift names it and the repair deletes it."""
    lab, _state, rec, net, web, api, watch = watched
    started = time.monotonic()
    lab.exec("tc", "filter", "add", "dev", web.veth, "ingress", "pref", "1", "handle", "2",
             "bpf", "da", "bytecode", PASS_ALL)
    seen = arrivals_after(web, lab.outside, started)
    assert_closed_within(seen)
    settled(rec, net, watch)
    assert "handle 0x2" not in filters(lab, web.veth, "ingress")
    assert_policy(web, api)


@ebpf
def test_a_foreign_filter_of_another_protocol_in_our_place_is_replaced_by_ours(watched, tmp_path):
    """Ours deleted and a pass-all filter for IPv4 at our priority: ours cannot be
    attached next to it (protocol mismatch), so the priority is cleared first."""
    lab, _state, rec, net, web, api, watch = watched
    started = time.monotonic()
    batch = tmp_path / "tc.batch"   # one tc process: no repair can come in between
    batch.write_text(f"filter del dev {web.veth} ingress\n"
                     f'filter add dev {web.veth} ingress protocol ip pref 1 bpf da bytecode "{PASS_ALL}"\n')
    lab.exec("tc", "-batch", str(batch))
    seen = arrivals_after(web, lab.outside, started)
    assert_closed_within(seen)
    settled(rec, net, watch, repairs=(1, 2))   # two if the deletion was seen alone first
    assert "protocol ip" not in filters(lab, web.veth, "ingress")
    assert_policy(web, api)


@ebpf
def test_the_daemons_own_attaches_cause_no_repair(watched):
    """A join attaches our programs to a new veth (a new clsact qdisc and two filters,
    announced like anyone's): the check runs, finds them ours, and repairs nothing."""
    lab, state, rec, net, web, api, watch = watched
    (late,) = lab.add(1)
    state.put_endpoints([endpoint(late, "web")])
    rec.endpoint_changed(net, endpoint(late, "web"))
    time.sleep(0.6)
    assert watch.repairs == 0 and watch.hooks.checks >= 1
    assert rec.drift(net) == []
    assert probe_tcp(late, api.ip4, 8080) == "ok"
    assert probe_tcp(api, late.ip4, 8080) == "timeout"


def attach_tcx_pass(lab, veth: str, by_link: bool) -> int:
    """A foreign tcx program on ``veth``'s ingress that passes everything (``r0 = 0;
    exit``: TCX_PASS), attached as bpftool would (a bpf_link) or with BPF_PROG_ATTACH;
    returns the fd to close after the test (the link's, or the program's)."""
    lib = libbpf.lib()
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    opts = struct.pack("=QII", 16, 0, 46)   # bpf_prog_load_opts: sz, attempts, BPF_TCX_INGRESS
    load, attach, link = lib.bpf_prog_load, lib.bpf_prog_attach, lib.bpf_link_create
    load.restype, load.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                                 ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    attach.restype, attach.argtypes = ctypes.c_int, [ctypes.c_int] * 3 + [ctypes.c_uint]
    link.restype, link.argtypes = ctypes.c_int, [ctypes.c_int] * 3 + [ctypes.c_void_p]
    prog = load(3, b"foreign_pass", b"GPL", insns, 2, opts)   # BPF_PROG_TYPE_SCHED_CLS
    assert prog >= 0, f"bpf_prog_load: {ctypes.get_errno()}"
    with netns(lab.host):
        ifindex = socket.if_nametoindex(veth)
        if not by_link:
            assert attach(prog, ifindex, 46, 0) == 0
            return prog
        fd = link(prog, ifindex, 46, None)
    os.close(prog)
    assert fd >= 0, f"bpf_link_create: {ctypes.get_errno()}"
    return fd


@ebpf
@pytest.mark.parametrize("by_link", [False, True], ids=["attached", "link"])
def test_a_foreign_tcx_program_before_ours_is_drift_and_detached(watched, by_link):
    """A tcx program runs before every tc filter: its pass lets web's traffic out
    unjudged. No notification announces it: drift (the periodic pass) sees it."""
    lab, _state, rec, net, web, _api, _watch = watched
    fd = attach_tcx_pass(lab, web.veth, by_link)
    try:
        seen = arrivals_after(web, lab.outside, time.monotonic(), until=0.4)
        assert {outcome for _t, outcome in seen} == {"ok"}, seen   # the hole is real
        assert any("foreign tcx program" in line for line in rec.drift(net)), rec.drift(net)
        assert rec.reconcile(full=False) == 1
        assert rec.drift(net) == []
        seen = arrivals_after(web, lab.outside, time.monotonic(), until=0.4)
        assert {outcome for _t, outcome in seen} == {"timeout"}, seen
    finally:
        os.close(fd)
