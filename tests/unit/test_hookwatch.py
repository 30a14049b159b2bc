"""HookWatch.check: what it does with the devices heard of -- the cheap check per
backend, our programs put back where it failed, and the reconciler's look at the
whole network only when putting them back failed or did not hold."""
from __future__ import annotations

import pytest

from plugin.enforce.backend import BackendError
from plugin.enforce.ebpf import hookwatch
from plugin.kernel.tcwatch import RESYNC, TcEvent


class Backend:
    attaches_to_links = True

    def __init__(self, fail: bool = False):
        self.fail, self.reattached = fail, []

    def reattach(self, network_id, links):
        if self.fail:
            raise BackendError("eBPF: cannot attach to ifindex 7: EINVAL")
        self.reattached.append((network_id, sorted(links)))
        return []


class Reconciler:
    def __init__(self):
        self.checked = []

    def repair_network(self, network_id):
        self.checked.append(network_id)


class NftOnly:
    """A backend that does not attach to links (nftables): not watched."""


def watch(monkeypatch, backend, found):
    heard = []
    monkeypatch.setattr(hookwatch, "drifted", lambda b, links, ipr: heard.append(links) or found)
    rec = Reconciler()
    w = hookwatch.HookWatch(rec, [backend, NftOnly()])
    w._ipr = object()   # noqa: SLF001 (no rtnetlink socket in a unit test)
    return w, rec, heard


DETACHED = (["port v: our ingress program is not attached"], {7})


def test_a_device_whose_hooks_drifted_gets_our_programs_back(monkeypatch):
    backend = Backend()
    w, rec, heard = watch(monkeypatch, backend, {"net1": DETACHED})
    w.links.add(TcEvent("delete", "filter", 7))
    w.check()
    assert heard == [{7}]
    assert backend.reattached == [("net1", [7])] and rec.checked == []
    assert (w.reattached, w.checks) == (1, 1)


def test_the_same_drift_right_after_a_reattach_goes_to_the_reconciler(monkeypatch):
    backend = Backend()
    found = {"net1": DETACHED}
    w, rec, _heard = watch(monkeypatch, backend, found)
    w.check()
    w.check()                        # our attach was announced: the check finds the same drift
    assert len(backend.reattached) == 1 and rec.checked == ["net1"]
    found["net1"] = ([], set())      # in order again: the next detach is put back at once
    w.check()
    found["net1"] = DETACHED
    w.check()
    assert len(backend.reattached) == 2 and rec.checked == ["net1"]


def test_nothing_drifted_nothing_written(monkeypatch):
    backend = Backend()
    w, rec, heard = watch(monkeypatch, backend, {"net1": ([], set())})
    w.links.add(TcEvent("add", "filter", 7))   # the daemon's own attach, say
    w.check()
    assert backend.reattached == [] and rec.checked == [] and w.reattached == 0


def test_a_failed_reattach_leaves_the_repair_to_the_reconciler(monkeypatch):
    w, rec, _heard = watch(monkeypatch, Backend(fail=True), {"net1": (["x"], {7})})
    w.check()
    assert rec.checked == ["net1"] and w.reattached == 0


def test_after_a_resync_every_port_is_checked(monkeypatch):
    w, _rec, heard = watch(monkeypatch, Backend(), {})
    w.links.add(RESYNC)
    w.check()
    assert heard == [None]


def test_only_backends_that_attach_to_links_are_watched():
    assert [type(b) for b in hookwatch.HookWatch(Reconciler(), [NftOnly(), Backend()]).backends] == [Backend]
    assert hookwatch.HookWatch(Reconciler(), [NftOnly()]).start().watcher is None


def test_a_failed_check_makes_the_next_one_look_at_every_device(monkeypatch):
    class Socket:
        closed = False

        def close(self):
            Socket.closed = True

    def broken(backend, links, ipr):
        raise OSError("netlink went away")
    monkeypatch.setattr(hookwatch, "drifted", broken)
    w = hookwatch.HookWatch(Reconciler(), [Backend()])
    w._ipr = Socket()   # noqa: SLF001
    w.links.add(TcEvent("delete", "filter", 7))
    with pytest.raises(OSError):   # the Debouncer logs it
        w.check()
    assert Socket.closed and w._ipr is None   # noqa: SLF001
    assert w.links.take() is None
