"""ebpf.hooks: which filters on a veth's clsact hooks are foreign (at our priority, not
our handle-1 bpf filter for every protocol), and how they are deleted: one handle at
a time next to ours, the whole priority when ours cannot be in it. The kernel side
(real filters, real packets) is tests/kernel/test_ebpf_hooks_kernel.py."""
from __future__ import annotations

import socket

import pytest

from plugin.enforce.ebpf import hooks, libbpf, tcx

INGRESS, EGRESS = hooks.PARENTS[libbpf.BPF_TC_INGRESS], hooks.PARENTS[libbpf.BPF_TC_EGRESS]
ALL, IP = 0x0003, 0x0800


class Msg(dict):
    """What pyroute2's get_filters yields: fields by key, attributes by get_attr."""

    def __init__(self, handle, prio, protocol, kind, chain=None):
        super().__init__(handle=handle, info=(prio << 16) | socket.htons(protocol))
        self.attrs = {"TCA_KIND": kind, "TCA_CHAIN": chain}

    def get_attr(self, name):
        return self.attrs.get(name)


class FakeIPRoute:
    def __init__(self, hooks_: dict):
        self.hooks = hooks_          # parent -> [Msg]
        self.deleted = []

    def get_filters(self, index, parent):
        return tuple(self.hooks.get(parent, ()))

    def tc(self, command, kind=None, index=None, handle=0, **kw):
        self.deleted.append((command, kind, index, handle, kw["parent"], kw["prio"], kw["protocol"]))


@pytest.fixture(autouse=True)
def no_tcx(monkeypatch):
    """No tcx program on any hook (the kernel is not asked)."""
    tcx_progs = {}
    monkeypatch.setattr(tcx, "programs", lambda ifindex, point: list(tcx_progs.get((ifindex, point), ())))
    monkeypatch.setattr(tcx, "detach", lambda ifindex, point: list(tcx_progs.pop((ifindex, point), ())))
    return tcx_progs


def ours_header_and_filter(prio=1):
    return [Msg(0, prio, ALL, "bpf"), Msg(1, prio, ALL, "bpf")]


def test_only_our_filter_is_not_foreign():
    ipr = FakeIPRoute({INGRESS: ours_header_and_filter(), EGRESS: ours_header_and_filter()})
    assert hooks.foreign_lines(ipr, 7, "veth0") == []
    assert hooks.remove_foreign(ipr, 7) == [] and ipr.deleted == []


def test_a_second_bpf_filter_at_our_priority_is_foreign_and_deleted_alone():
    ipr = FakeIPRoute({INGRESS: [Msg(0, 1, ALL, "bpf"), Msg(2, 1, ALL, "bpf"), Msg(1, 1, ALL, "bpf")]})
    assert hooks.foreign_lines(ipr, 7, "veth0") == [
        "port veth0: a foreign filter (pref 1 handle 0x2 bpf) runs before our ingress program"]
    gone = hooks.remove_foreign(ipr, 7)
    assert gone == [hooks.Filter(2, "bpf", ALL)]
    assert ipr.deleted == [("del-filter", "bpf", 7, 2, INGRESS, 1, ALL)]   # ours stays


def test_a_filter_of_another_protocol_in_our_place_clears_the_whole_priority():
    ipr = FakeIPRoute({EGRESS: [Msg(0, 1, IP, "bpf"), Msg(1, 1, IP, "bpf")]})
    gone = hooks.remove_foreign(ipr, 7)
    assert gone == [hooks.Filter(1, "bpf", IP)]
    assert ipr.deleted == [("del-filter", None, 7, 0, EGRESS, 1, IP)]


def test_a_filter_of_another_kind_in_our_place_clears_the_whole_priority():
    ipr = FakeIPRoute({INGRESS: [Msg(0, 1, ALL, "matchall"), Msg(1, 1, ALL, "matchall")]})
    assert [f.kind for f in hooks.remove_foreign(ipr, 7)] == ["matchall"]
    assert [d[3] for d in ipr.deleted] == [0]


def test_filters_at_other_priorities_and_chains_are_left_alone():
    others = ours_header_and_filter() + [Msg(0, 2, ALL, "bpf"), Msg(1, 2, ALL, "bpf"),
                                         Msg(3, 1, ALL, "bpf", chain=5)]
    ipr = FakeIPRoute({INGRESS: others})
    assert hooks.at_our_priority(ipr, 7, libbpf.BPF_TC_INGRESS) == [hooks.Filter(1, "bpf", ALL)]
    assert hooks.remove_foreign(ipr, 7) == [] and ipr.deleted == []


def test_clear_acts_only_where_drift_saw_foreign_filters(monkeypatch):
    done = []
    monkeypatch.setattr(hooks, "remove_all_foreign", lambda ifindexes: done.append(list(ifindexes)) or [])
    seen = {3, 9}
    hooks.clear(seen, [1, 3, 4])
    assert done == [[3]] and seen == {9}


def test_a_tcx_program_is_foreign_and_detached(no_tcx):
    no_tcx[(7, libbpf.BPF_TC_INGRESS)] = [42]
    ipr = FakeIPRoute({INGRESS: ours_header_and_filter(), EGRESS: ours_header_and_filter()})
    assert hooks.foreign_lines(ipr, 7, "veth0") == [
        "port veth0: a foreign tcx program (id 42) runs before our ingress program"]
    gone = hooks.remove_foreign(ipr, 7)
    assert [f.text() for f in gone] == ["tcx program 42"] and ipr.deleted == []
    assert hooks.foreign_lines(ipr, 7, "veth0") == []
