"""The element writer's large batches with the change watcher paused
(plugin.enforce.nftables.netlink.ElementWriter._send_quietly): the ruleset generation
decides whether the watcher is told that changes went unannounced. The kernel side
(membership, a foreign commit inside the window) is in tests/kernel/test_nftables.py."""
from __future__ import annotations

import errno

import pytest

from plugin.enforce.nftables.netlink import QUIET_MIN, ElementWriter
from plugin.enforce.nftables.elements import ElementDelta


class Watcher:
    def __init__(self):
        self.log = []

    def pause(self):
        self.log.append("pause")

    def resume(self):
        self.log.append("resume")

    def lost(self):
        self.log.append("lost")


class Writer(ElementWriter):
    """Generations from a script; ``_send`` commits (one more generation) or fails."""

    def __init__(self, generations, commits=(), fail=None):
        super().__init__()
        self.generations, self.commits, self.fail, self.sent = list(generations), list(commits), fail, 0

    def _generation(self):
        value = self.generations.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    def _send(self, batch, names):
        self.sent += 1
        if self.fail:
            raise self.fail


def test_own_commit_only_tells_nothing():
    watcher, writer = Watcher(), Writer([7, 8])
    writer._send_quietly(watcher, b"", {})
    assert (watcher.log, writer.sent) == (["pause", "resume"], 1)


def test_a_foreign_commit_in_the_window_is_lost_events():
    watcher, writer = Watcher(), Writer([7, 9])
    writer._send_quietly(watcher, b"", {})
    assert watcher.log == ["pause", "resume", "lost"]


def test_the_generation_wraps_at_32_bits():
    watcher = Watcher()
    Writer([0xFFFFFFFF, 0])._send_quietly(watcher, b"", {})
    assert watcher.log == ["pause", "resume"]


def test_a_refused_batch_commits_nothing_and_still_rejoins():
    watcher, writer = Watcher(), Writer([7, 7], fail=OSError(errno.EINVAL, "refused"))
    with pytest.raises(OSError):
        writer._send_quietly(watcher, b"", {})
    assert watcher.log == ["pause", "resume"]


def test_an_unreadable_generation_after_the_window_is_lost_events():
    watcher = Watcher()
    Writer([7, OSError(errno.EPERM, "no")])._send_quietly(watcher, b"", {})
    assert watcher.log == ["pause", "resume", "lost"]


def test_without_a_generation_the_batch_goes_out_with_the_watcher_listening():
    watcher, writer = Watcher(), Writer([OSError(errno.EPERM, "no")])
    writer._send_quietly(watcher, b"", {})
    assert (watcher.log, writer.sent) == ([], 1)


def test_only_large_deltas_pause(monkeypatch):
    quiet = []
    writer = ElementWriter()
    writer.quiet = Watcher()
    monkeypatch.setattr(writer, "_messages", lambda *a, **k: [])
    monkeypatch.setattr(writer, "_send", lambda batch, names: quiet.append(False))
    monkeypatch.setattr(writer, "_send_quietly", lambda w, batch, names: quiet.append(True))
    small, large = ElementDelta(), ElementDelta()
    small.add["pol_port"] = {i: None for i in range(QUIET_MIN - 1)}
    large.add["pol_port"] = {i: None for i in range(QUIET_MIN)}
    writer.apply("t", small)
    writer.apply("t", large)
    assert quiet == [False, True]
