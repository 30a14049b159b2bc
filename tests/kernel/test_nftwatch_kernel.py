"""A large element delta committed unheard, against the real kernel in a throwaway namespace:
the change watcher leaves NFNLGRP_NFTABLES for the batch (it hears none of its elements), and
a commit of someone else in that window is not lost: the generation tells, and subscribers get
``resync``."""
from __future__ import annotations

import collections
import subprocess
import time
import uuid

import pytest

from plugin.enforce.backend import NetworkSpec
from plugin.enforce.nftables import NftBackend
from plugin.enforce.nftables.netlink import UNHEARD_FROM
from plugin.kernel import netns
from plugin.kernel.nftwatch import NftWatcher
from segmentation.identities import MemoryAllocator
from segmentation.options import parse_network_options
from segmentation.policymap import compile_policy_map

NET = NetworkSpec("5e17" + "0" * 60, "snk17", ("10.229.0.0/24",), ("10.229.0.1",))
SEGMENTS = [f"s{i}" for i in range(30)]


def policy(rules: int, port: int, ids, *more: str):
    texts = [f"s{k % 30}->s{(k // 30) % 30}:tcp/{port + k // 900}" for k in range(rules)] + list(more)
    return compile_policy_map(parse_network_options({"secnet.allow": ",".join(texts)}), ids)


@pytest.fixture
def ns():
    name = f"secnet-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _world(rules: int):
    """Backend with a network of ``rules`` rules, a running watcher wired as the daemon
    wires it (but hearing the writer's own port: its elements would show), the events."""
    ids = MemoryAllocator().allocate(NET.id, SEGMENTS + ["default"])
    backend, watcher, got = NftBackend(), NftWatcher().start(), collections.Counter()
    old, new = policy(rules, 1000, ids), policy(rules, 2000, ids)
    backend.apply_network(NET, old, [])
    watcher.subscribe(lambda e: got.update([(e.kind, e.object)]))
    _settle(got)   # the network's own build, announced
    got.clear()
    backend.writer.unheard = watcher.unheard
    return backend, watcher, got, old, new, ids


def _settle(got, seconds=0.3):
    time.sleep(seconds)
    return dict(got)


def test_a_large_delta_commits_unheard_and_a_small_one_heard(ns):
    def run():
        backend, watcher, got, old, new, ids = _world(UNHEARD_FROM)
        try:
            gen = backend.writer._generation()
            backend.apply_policy(NET, old.delta(new), policy=new)   # 2 x UNHEARD_FROM elements
            unheard = _settle(got)
            assert backend.writer._generation() == gen + 1
            got.clear()
            extra = policy(UNHEARD_FROM, 2000, ids, "s1->s2:tcp/7")
            backend.apply_policy(NET, new.delta(extra), policy=extra)
            heard = _settle(got)
            return unheard, heard
        finally:
            watcher.stop()
            backend.remove_network(NET.id)
    unheard, heard = netns.run_in(ns, run, timeout=60)
    assert unheard == {}                          # not one of its 2,000 elements, no resync
    assert heard.get(("add", "element")) == 1     # the watcher hears again afterwards


def test_someone_elses_commit_in_the_window_is_a_resync(ns):
    def run():
        backend, watcher, got, old, new, _ids = _world(UNHEARD_FROM)
        send = backend.writer._send

        def with_a_foreign_commit(batch, names):
            subprocess.run(["nft", "add", "table", "inet", "snk17_other"], check=True)
            send(batch, names)
        backend.writer._send = with_a_foreign_commit
        try:
            backend.apply_policy(NET, old.delta(new), policy=new)
            return _settle(got)
        finally:
            watcher.stop()
            backend.remove_network(NET.id)
    events = netns.run_in(ns, run, timeout=60)
    assert events == {("resync", "all"): 1}   # the table's own announcement was not heard: the gap was
