"""The eBPF backend's policy swap is atomic: after every single map write, the
version in force holds the whole old or the whole new policy (and its settings).

The kernel is replaced by dict-backed maps behind the same libbpf calls, and
every write is followed by a look at what a packet would see at that moment.
"""
from __future__ import annotations

import pytest

from plugin.enforce.backend import NetworkSpec
from plugin.enforce.ebpf import backend as eb
from plugin.enforce.ebpf import maps
from plugin.enforce.ebpf.pins import Handle
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules

IDS = {"web": 256, "api": 257, "db": 258}
NET = NetworkSpec("ab" * 32, "br0")


class FakeKernel:
    """fd -> {key: value}; calls ``observe`` after every write."""

    def __init__(self, observe):
        self.maps = {}
        self.observe = observe

    def fd(self, name: str) -> int:
        self.maps[len(self.maps)] = {}
        return len(self.maps) - 1

    def lookup(self, fd, key, _size):
        return self.maps[fd].get(key)

    def update(self, fd, key, value, _flags=0):
        self.maps[fd][key] = value
        self.observe()

    def delete(self, fd, key):
        found = self.maps[fd].pop(key, None) is not None
        self.observe()
        return found

    def keys(self, fd, _size):
        return iter(list(self.maps[fd]))

    # a batch (BPF_MAP_*_BATCH) writes its elements one after the other, as packets see them;
    # keys and values come as arrays (every key, every value of one size, one after another)
    def update_batch(self, fd, count, keys, values, flags=0):
        ks, vs = len(keys) // count, len(values) // count
        for i in range(count):
            self.update(fd, keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs], flags)

    def delete_batch(self, fd, count, keys):
        ks = len(keys) // count
        for i in range(count):
            self.delete(fd, keys[i * ks:(i + 1) * ks])


def policy(rules: str, **opts):
    return compile_policy_map(NetworkOptions(rules=parse_rules(rules), **opts), IDS)


def in_force(kernel: FakeKernel, h: Handle) -> tuple:
    """(policy content, cidr content, settings) that a packet sees now."""
    state = kernel.maps[h.maps["state"]].get(maps.U32.pack(0))
    version = maps.STATE.unpack(state)[0] if state else 0
    pol = {maps.policy_unversioned(k)[1]: v for k, v in kernel.maps[h.maps["policy"]].items()
           if maps.policy_unversioned(k)[0] == version}
    cid = {maps.cidr_unversioned(k)[1]: v for k, v in kernel.maps[h.maps["cidrs"]].items()
           if maps.cidr_unversioned(k)[0] == version}
    return pol, cid, kernel.maps[h.maps["settings"]].get(maps.U32.pack(version))


def expect(pm, mode="enforce") -> tuple:
    return maps.policy_content(pm.entries), maps.cidr_content(pm.cidrs), maps.settings_value(pm, mode)


@pytest.fixture
def rig(monkeypatch):
    seen = []
    kernel = FakeKernel(lambda: seen.append(in_force(kernel, handle)))
    handle = Handle(NET.id, "/nowhere", maps={n: kernel.fd(n) for n in
                                              ("state", "settings", "policy", "cidrs", "restricted", "allowed")})
    for fn in ("lookup", "update", "delete", "keys", "update_batch", "delete_batch"):
        monkeypatch.setattr(eb.libbpf, fn, getattr(kernel, fn))
    kernel.maps[handle.maps["state"]][maps.U32.pack(0)] = maps.STATE.pack(0, 0, 0)
    backend = eb.EbpfBackend(pin_root="/nowhere")
    backend.later = lambda fn: None   # the leveling runs at the next swap, or where a test calls _level
    monkeypatch.setattr(eb, "LEVEL_LATER", 0)   # every leveling left for later, however small
    st = eb._Net(handle, NET)
    backend._nets[NET.id[:12]] = st
    return backend, st, seen


@pytest.mark.parametrize("old_rules,new_rules,opts", [
    ("web->api:tcp/8080, api->db:tcp/5432", "web->api:tcp/8000-8100, *->db:udp/53", {}),
    ("web->10.0.0.0/8:tcp/443", "web->10.1.0.0/16:udp/53, 10.9.0.0/16->api:tcp/80", {"egress": "deny"}),
    ("web->*", "", {"intra": "deny"}),
])
def test_every_moment_of_a_swap_is_old_or_new(rig, old_rules, new_rules, opts):
    backend, st, seen = rig
    old, new = policy(old_rules), policy(new_rules, **opts)
    backend._swap(st, old, eb.maps.full_changes(old))
    seen.clear()
    backend._swap(st, new, eb._delta_changes(old, new, old.delta(new)))
    allowed = (expect(old), expect(new))
    bad = [i for i, moment in enumerate(seen) if moment not in allowed]
    assert seen and not bad, f"{len(bad)} of {len(seen)} moments were neither old nor new"
    assert seen[-1] == expect(new)
    assert in_force(*_kernel_of(st)) == expect(new)
    seen.clear()
    backend._level(st)   # the version not in force made level: no packet sees it
    assert not seen or all(moment == expect(new) for moment in seen)
    state = maps.STATE.unpack(_kernel_of(st)[0].maps[st.handle.maps["state"]][maps.U32.pack(0)])
    assert state[1] == 2                                   # one generation per change


def _kernel_of(st):
    return eb.libbpf.lookup.__self__, st.handle


def test_both_versions_hold_the_same_content_at_rest(rig):
    backend, st, _seen = rig
    old, new = policy("web->api:tcp/1-1000"), policy("web->api:tcp/500-2000, api->web:icmp")
    backend._swap(st, old, eb.maps.full_changes(old))
    backend._swap(st, new, eb._delta_changes(old, new, old.delta(new)))
    backend._level(st)
    kernel = eb.libbpf.lookup.__self__
    by_version = {0: {}, 1: {}}
    for key, value in kernel.maps[st.handle.maps["policy"]].items():
        version, rest = maps.policy_unversioned(key)
        by_version[version][rest] = value
    assert by_version[0] == by_version[1] == maps.policy_content(new.entries)


def test_a_mode_switch_is_a_flip_too(rig):
    backend, st, seen = rig
    pm = policy("web->api:tcp/8080")
    backend._swap(st, pm, eb.maps.full_changes(pm))
    st.spec = NetworkSpec(NET.id, "br0", mode="audit")
    seen.clear()
    backend._swap(st, pm, eb._delta_changes(pm, pm, pm.delta(pm)))
    assert all(m in (expect(pm), expect(pm, "audit")) for m in seen)
    assert seen[-1] == expect(pm, "audit")


SEQUENCE = ["web->api:tcp/8080", "web->api:tcp/8000-8100, api->db:udp/53", "*->db:udp/53, web->api:any",
            "", "web->api:tcp/8080, web->api:tcp/8079-8081, api->web:icmp", "web->api:tcp/8079-8081"]


def test_a_sequence_of_edits_keeps_the_map_exact(rig):
    """apply_policy's group index: after each edit both versions hold exactly the policy."""
    backend, st, _seen = rig
    first = policy(SEQUENCE[0])
    backend._swap(st, first, eb.maps.full_changes(first))
    st.index = eb.group_index(first.entries)
    current = first
    kernel = eb.libbpf.lookup.__self__
    for rules in SEQUENCE[1:] + SEQUENCE[:1]:
        target = policy(rules)
        backend.apply_policy(NET, current.delta(target))
        current = target
        assert in_force(kernel, st.handle) == expect(target), rules
        backend._level(st)
        by_version = {0: {}, 1: {}}
        for key, value in kernel.maps[st.handle.maps["policy"]].items():
            version, rest = maps.policy_unversioned(key)
            by_version[version][rest] = value
        assert by_version[0] == by_version[1] == maps.policy_content(target.entries), rules
        assert st.index == eb.group_index(target.entries)


def test_the_leveling_waits_for_the_caller_and_is_done_before_the_next_swap(rig):
    """A swap leaves the version not in force to ``later`` (a thread in the daemon); the
    next swap levels it first if it is still pending, so its delta lands on the right content."""
    backend, st, _seen = rig
    pending = []
    backend.later = pending.append
    first, second, third = (policy(r) for r in ("web->api:tcp/80", "api->db:tcp/5432", "web->db:udp/53"))
    backend._swap(st, first, eb.maps.full_changes(first))
    backend._swap(st, second, eb._delta_changes(first, second, first.delta(second)))
    kernel = eb.libbpf.lookup.__self__
    assert st.level is not None and len(pending) == 2
    assert in_force(kernel, st.handle) == expect(second)
    backend._swap(st, third, eb._delta_changes(second, third, second.delta(third)))   # levels first
    assert in_force(kernel, st.handle) == expect(third)
    pending[-1]()   # the thread's turn: nothing left but this swap's own leveling
    assert st.level is None
    by_version = {0: {}, 1: {}}
    for key, value in kernel.maps[st.handle.maps["policy"]].items():
        version, rest = maps.policy_unversioned(key)
        by_version[version][rest] = value
    assert by_version[0] == by_version[1] == maps.policy_content(third.entries)


def test_a_leveling_for_a_network_no_longer_held_does_nothing(rig):
    backend, st, _seen = rig
    pending = []
    backend.later = pending.append
    pm = policy("web->api:tcp/80")
    backend._swap(st, pm, eb.maps.full_changes(pm))
    backend._nets.clear()   # removed (or reloaded, or the backend closed) since
    pending[-1]()
    assert st.level is not None


def test_a_failed_leveling_is_retried_from_what_the_kernel_holds(rig, monkeypatch):
    """The version not in force is read back when its leveling failed once: the next
    change's delta then lands on what that version really holds; the one in force stays."""
    backend, st, _seen = rig
    first, second, third = (policy(r) for r in ("web->api:tcp/80", "api->db:tcp/5432", "web->db:udp/53"))
    backend._swap(st, first, eb.maps.full_changes(first))
    backend._level(st)
    backend._swap(st, second, eb._delta_changes(first, second, first.delta(second)))
    kernel = eb.libbpf.lookup.__self__
    real = eb.libbpf.update_batch

    def broken(*_args, **_kw):
        raise eb.libbpf.LibbpfError("update_batch: ENOMEM")
    monkeypatch.setattr(eb.libbpf, "update_batch", broken)
    with pytest.raises(eb.libbpf.LibbpfError):
        backend._level(st)
    assert in_force(kernel, st.handle) == expect(second) and st.level is not None
    monkeypatch.setattr(eb.libbpf, "update_batch", real)
    backend._swap(st, third, eb._delta_changes(second, third, second.delta(third)))
    backend._level(st)
    by_version = {0: {}, 1: {}}
    for key, value in kernel.maps[st.handle.maps["policy"]].items():
        version, rest = maps.policy_unversioned(key)
        by_version[version][rest] = value
    assert by_version[0] == by_version[1] == maps.policy_content(third.entries)


def test_a_small_change_levels_the_other_version_at_once(rig, monkeypatch):
    """Below LEVEL_LATER elements a thread would cost more than the writes: none is started."""
    backend, st, _seen = rig
    monkeypatch.setattr(eb, "LEVEL_LATER", 512)
    first, second = policy("web->api:tcp/80"), policy("web->api:tcp/80, api->db:tcp/5432")
    backend._swap(st, first, eb.maps.full_changes(first))   # a dump-based write: later
    backend.later = lambda fn: pytest.fail("a thread for a one-rule change")
    backend._level(st)
    backend._swap(st, second, eb._delta_changes(first, second, first.delta(second)))
    assert st.level is None


def test_a_levelling_that_fails_after_the_flip_does_not_fail_the_change(rig, monkeypatch):
    """The new policy is in force once the flip is written: a small change's levelling that
    fails then is logged and redone (from a dump) by the next change, not reported as the
    change's failure."""
    backend, st, _seen = rig
    monkeypatch.setattr(eb, "LEVEL_LATER", 512)
    first, second, third = (policy(r) for r in ("web->api:tcp/80", "api->db:tcp/5432", "web->db:udp/53"))
    backend._swap(st, first, eb.maps.full_changes(first))
    backend._level(st)
    kernel = eb.libbpf.lookup.__self__
    writes = []
    real = eb.libbpf.update_batch

    def second_one_fails(*args, **kw):
        writes.append(1)
        if len(writes) == 2:   # the first batch is the version not in force, before the flip
            raise eb.libbpf.LibbpfError("update_batch: ENOMEM")
        return real(*args, **kw)
    monkeypatch.setattr(eb.libbpf, "update_batch", second_one_fails)
    backend._swap(st, second, eb._delta_changes(first, second, first.delta(second)))
    assert in_force(kernel, st.handle) == expect(second) and st.level is not None
    monkeypatch.setattr(eb.libbpf, "update_batch", real)
    backend._swap(st, third, eb._delta_changes(second, third, second.delta(third)))
    assert in_force(kernel, st.handle) == expect(third) and st.level is None
    by_version = {0: {}, 1: {}}
    for key, value in kernel.maps[st.handle.maps["policy"]].items():
        version, rest = maps.policy_unversioned(key)
        by_version[version][rest] = value
    assert by_version[0] == by_version[1] == maps.policy_content(third.entries)
