"""A daemon of this build adopts the networks an older build made (issues 12, 13), fail closed.

The start path as plugin.daemon.wiring.start runs it: the old daemon is gone (its
backend closed, its kernel state left enforcing), a new backend object and a
Reconciler over the saved State make the first pass, which writes every network
whole. Within that pass each network must come under this build's programs
(eBPF) or rules (nftables), and while it runs UDP datagrams that the policy
denies are sent every 2 ms in both families: not one may arrive. An allowed
datagram stream runs alongside (its losses are printed), a TCP connection opened
under the older build must still carry data after, and on eBPF a fragmented
datagram of an allowed flow must arrive after (the older build could not).

Older builds: eBPF, the datapath compiled from the commit before the ``frags``
map (upgrade_lab.PRE_FRAGS), loaded with that build's maps; nftables, a table
of FORMAT 9's bridge shape (no ``group_copy`` chain, added with FORMAT 10);
eBPF again, pinned maps of another shape than this build's (libbpf refuses to
reuse them: they are made anew).
"""
from __future__ import annotations

import logging
import os
import subprocess
import time

import pytest

from nsfixtures import BACKENDS, NET_ID, lab, only  # noqa: F401 (lab is a fixture)
from packets import echoes, open_stream, parallel, probe_tcp
from plugin.enforce.ebpf import maps
from plugin.enforce.nftables import readback as nft_readback
from plugin.enforce.reconciler import Reconciler
from test_fragments_kernel import BIG, received
from upgrade_lab import (ALLOWED, DENIED, PRE_FRAGS, PRE_FRAGS_MAPS, Trickle, attached, map_shape,
                         pinned_programs, restart, saved_network, sent_within, write_with_older_build)

pytestmark = pytest.mark.kernel


# --- older builds ------------------------------------------------------------------------
def _older_ebpf(lab, state, tmp_path, monkeypatch, web, api) -> set:
    """The network as the build before ``frags`` made it; returns its program ids."""
    write_with_older_build(lab, state, tmp_path, monkeypatch, PRE_FRAGS, PRE_FRAGS_MAPS, "frags")
    old = attached(lab, [web.veth, api.veth])
    assert old == pinned_programs(lab) and None not in old
    assert received(web, api, 4, ALLOWED, BIG) is None    # control: the older build drops them
    return old


def _older_nftables(lab, state, tmp_path, monkeypatch, web, api) -> None:
    """The network's tables as FORMAT 9 had them: no ``group_copy`` chain (FORMAT 10)."""
    Reconciler(state, {"nftables": lab.backend}).reconcile()
    listing = lab.nft("-a", "list", "chain", "bridge", lab.table, "ports_fwd").stdout
    handle = next(line.rsplit("# handle ", 1)[1].strip()
                  for line in listing.splitlines() if "goto group_copy" in line)
    lab.nft("delete", "rule", "bridge", lab.table, "ports_fwd", "handle", handle)
    lab.nft("delete", "chain", "bridge", lab.table, "group_copy")


OLDER = {"ebpf": _older_ebpf, "nftables": _older_nftables}


def _this_build_ebpf(lab, old, web, api) -> None:
    now = attached(lab, [web.veth, api.veth])
    assert now == pinned_programs(lab) and not now & old, (now, old)
    assert "frags" in os.listdir(os.path.join(lab.pin_root, NET_ID[:12]))
    assert received(web, api, 4, ALLOWED, BIG) == BIG
    assert received(web, api, 6, ALLOWED, BIG) == BIG
    assert received(web, api, 4, DENIED, BIG) is None


def _this_build_nftables(lab, old, web, api) -> None:
    assert "group_copy" in lab.nft("list", "chain", "bridge", lab.table, "group_copy").stdout


THIS_BUILD = {"ebpf": _this_build_ebpf, "nftables": _this_build_nftables}


# --- the upgrade -------------------------------------------------------------------------
def _upgrade_under_probes(lab, state, web, api, factory) -> tuple:
    """Restart into ``factory``'s backend while denied and allowed datagrams flow.
    Asserts that none of the denied ones arrived (and that they were sent during
    the pass); returns (Reconciler, allowed datagrams sent, of them received)."""
    denied = [Trickle(api, web, 4, ALLOWED), Trickle(api, web, 6, ALLOWED),   # the reverse: no rule
              Trickle(web, api, 4, DENIED), Trickle(web, api, 6, DENIED)]     # a port no rule names
    allowed = Trickle(web, api, 4, ALLOWED)
    time.sleep(0.2)
    try:
        rec, window = restart(lab, state, factory)
    finally:
        results = [t.stop() for t in denied]
        sent, got = allowed.stop()
    for i, (times, arrived) in enumerate(results):
        assert sent_within(times, window) > 0, f"probe {i} sent nothing during the pass {window}"
        assert arrived == set(), f"probe {i}: {len(arrived)} denied datagrams arrived"
    print(f"pass {window[1] - window[0]:.3f} s; allowed datagrams: {len(got)} of {len(sent)} arrived")
    return rec, len(sent), len(got)


def _policy_holds(web, api) -> None:
    assert parallel(probe_tcp, [(web, api.ip4, 8080), (web, api.ip6, 8080),
                                (api, web.ip4, 8080), (api, web.ip6, 8080)]) == ["ok", "ok", "timeout", "timeout"]


def test_an_older_builds_network_is_upgraded_by_the_first_pass_fail_closed(lab, tmp_path, monkeypatch, caplog):
    web, api = lab.add(2)
    state, net = saved_network(lab, str(tmp_path / "state"), web, api)
    stream = None
    try:
        old = OLDER[lab.backend_name](lab, state, tmp_path, monkeypatch, web, api)
        _policy_holds(web, api)
        stream = open_stream(web, api.ip4, 8080)
        with caplog.at_level(logging.INFO):
            rec, sent, got = _upgrade_under_probes(lab, state, web, api, BACKENDS[lab.backend_name])
        assert got > 0
        assert rec.drift(net) == []
        THIS_BUILD[lab.backend_name](lab, old, web, api)
        assert echoes(stream)                         # an established flow went on
        _policy_holds(web, api)
        assert "of another shape" not in caplog.text  # nothing but the missing map was made
    finally:
        if stream is not None:
            stream.close()
        state.close()


def _probing_each_attach(web, api, passed: list):
    """A factory of this build's eBPF backend that, right after it attaches its programs
    to a port, sends a denied datagram each way between web and api and notes in
    ``passed`` each one that arrived: the moment a port runs the new programs while the
    other port's entries may not be written yet (no tie to the 2 ms probes' timing)."""
    def factory(pin_root):
        backend = BACKENDS["ebpf"](pin_root)
        attach = backend._attach   # noqa: SLF001 (the moment under test)

        def attach_then_probe(st, ifindex):
            attach(st, ifindex)
            for src, dst, fam in ((web, api, 4), (api, web, 4), (web, api, 6)):
                if received(src, dst, fam, UNNAMED, 100, timeout=0.3) is not None:
                    passed.append((ifindex, src.ip(fam), dst.ip(fam)))
        backend._attach = attach_then_probe   # noqa: SLF001
        return backend
    return factory


UNNAMED = DENIED + 1   # a port no rule names, apart from the 2 ms probes' ports

#: map name -> bpftool arguments of a map of another shape than this build's
OTHER_SHAPES = {
    "members": ["type", "hash", "key", "20", "value", "12", "entries", "8192", "flags", "1"],
    "subnets": ["type", "lpm_trie", "key", "24", "value", "4", "entries", "64", "flags", "1"],
    "policy": ["type", "lpm_trie", "key", "12", "value", "4", "entries", "64", "flags", "1"],
}


@only("ebpf")
@pytest.mark.parametrize("names", [("members", "subnets"), ("policy",)], ids="+".join)
def test_pinned_maps_of_another_shape_are_made_anew_fail_closed(lab, tmp_path, names):
    """Maps an older build pinned with another layout: libbpf refuses to reuse them
    (the load failed, and the network stayed under the older programs); they are made
    anew and written whole before the new programs are attached. ``policy`` is one of
    pins.TOGETHER: conntrack is made anew with it and the stream's next packet, from
    its client, is judged again (allowed) -- it goes on."""
    web, api = lab.add(2)
    state, net = saved_network(lab, str(tmp_path / "state"), web, api)
    stream = None
    try:
        Reconciler(state, {"ebpf": lab.backend}).reconcile()
        stream = open_stream(web, api.ip4, 8080)
        old = attached(lab, [web.veth, api.veth])
        for name in names:
            pin = os.path.join(lab.pin_root, NET_ID[:12], name)
            os.unlink(pin)   # the attached programs keep theirs
            subprocess.run(["bpftool", "map", "create", pin, *OTHER_SHAPES[name], "name", name], check=True)
        passed = []
        rec, _sent, got = _upgrade_under_probes(lab, state, web, api, _probing_each_attach(web, api, passed))
        assert passed == [], f"denied datagrams arrived right after a port got the new programs: {passed}"
        assert got > 0
        assert map_shape(lab, "members")[2] == maps.MEMBER.size
        assert map_shape(lab, "policy")[2] == maps.POLICY_VAL.size
        now = attached(lab, [web.veth, api.veth])
        assert now == pinned_programs(lab) and not now & old
        assert rec.drift(net) == []
        assert echoes(stream)
        _policy_holds(web, api)
    finally:
        if stream is not None:
            stream.close()
        state.close()


def _no_scratch_namespace(_fn, timeout: float = 10.0):
    raise OSError("no scratch namespace here (as without CAP_SYS_ADMIN)")


@only("nftables")
def test_an_older_table_is_rewritten_when_no_fresh_reference_can_be_made(lab, tmp_path, monkeypatch):
    """Without a scratch namespace the reference of the rules is read from the kernel:
    the older build's table was compared with itself and adopted as it was."""
    web, api = lab.add(2)
    state, net = saved_network(lab, str(tmp_path / "state"), web, api)
    try:
        _older_nftables(lab, state, tmp_path, monkeypatch, web, api)
        monkeypatch.setattr(nft_readback, "in_scratch_namespace", _no_scratch_namespace)
        _rec, _sent, got = _upgrade_under_probes(lab, state, web, api, BACKENDS["nftables"])
        assert got > 0
        _this_build_nftables(lab, None, web, api)
        _policy_holds(web, api)
    finally:
        state.close()


@only("ebpf")
def test_an_older_builds_network_no_record_owns_is_removed_with_its_programs(lab, tmp_path, monkeypatch):
    """An orphan of the build before ``frags`` (no ``frags`` pin): the first pass removes
    it, programs off its veths included (opening its pins failed on the missing one)."""
    web, api = lab.add(2)
    state, net = saved_network(lab, str(tmp_path / "state"), web, api)
    try:
        _older_ebpf(lab, state, tmp_path, monkeypatch, web, api)
        for ep in state.endpoints(net.id):
            state.delete_endpoint(ep.id)
        state.delete_network(net.id)
        restart(lab, state, BACKENDS["ebpf"])
        assert not os.path.exists(os.path.join(lab.pin_root, NET_ID[:12]))
        assert attached(lab, [web.veth, api.veth]) == {None}
        assert probe_tcp(api, web.ip4, 8080) == "ok"   # no program of it judges them any more
    finally:
        state.close()
