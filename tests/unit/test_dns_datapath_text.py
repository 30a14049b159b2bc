"""plugin.dns's datapath texts without the kernel: the answer marks, eBPF fqdn entries,
nft elements and their tags (split from test_dns_learning.py)."""
import dataclasses

import pytest

from plugin.enforce.fqdn import Grant
from plugin.enforce.nftables import dnsmarks as marks
from plugin.enforce.nftables import fqdn as nft
from segmentation.policymap import FqdnEntry

WEB = 257
RULE = "web->dns(api.example.test):tcp/443"
ENTRY = FqdnEntry(WEB, "api.example.test", "tcp", 443, 443, RULE)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_answer_marks_hold_only_replies_to_marked_addresses_and_never_bypass():
    rule = " ".join(marks.AnswerMarks(None, 5353).rule())
    assert rule == ("-m mark --mark 0x400000/0x400000 -m comment --comment secnet-dns "
                    "-j NFQUEUE --queue-num 5353")
    table = marks.table_script()
    assert "--queue-bypass" not in rule and "table inet secnet-dns {" in table
    assert ("add rule inet secnet-dns forward meta l4proto { tcp, udp } th sport 53 ct direction reply "
            "ip daddr @dst4 meta mark set meta mark | 0x400000") in table
    assert "delete table" not in table and "delete table" in marks.table_script(replace=True)
    assert "flush set inet secnet-dns dst4" in table and "flush set" not in marks.table_script(keep=True)
    assert "ip6 daddr @dst6" in table and "hook output priority -160" in table
    assert marks.element_script("add", ["10.224.0.3", "fd00:224::0:2", "10.224.0.2"]) == (
        "add element inet secnet-dns dst4 { 10.224.0.2, 10.224.0.3 }\n"
        "add element inet secnet-dns dst6 { fd00:224::2 }\n")
    assert marks.element_script("delete", []) == ""


def test_answer_marks_budget_drops_a_flood_per_address_before_the_mark_and_survives_rewrites():
    table = marks.table_script()
    budget = ("add rule inet secnet-dns forward meta l4proto { tcp, udp } th sport 53 ct direction reply "
              "ip6 daddr @dst6 update @budget6 { ip6 daddr limit rate over 500/second burst 1000 packets } "
              'counter name budget drop comment "secnet-dns-budget"')
    assert budget in table and table.index(budget) < table.index("ip6 daddr @dst6 meta mark set")
    assert table.count('comment "secnet-dns-budget"') == 4        # v4, v6 in forward and output
    assert "set budget4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 1m; }" in table
    assert "  counter budget { }" in table                  # named: a rewrite keeps its count
    assert not any(line.startswith("flush set inet secnet-dns budget") for line in table.splitlines())


class Runner:
    def __init__(self):
        self.scripts = []

    def apply(self, script):
        self.scripts.append(script)


def test_answer_marks_change_by_delta():
    runner = Runner()
    m = marks.AnswerMarks(runner, 1, binaries=())
    m.install(["10.224.0.2"])
    m.change(["10.224.0.3", "10.224.0.2"], [])
    m.change([], ["10.224.0.2", "10.224.0.9"])
    m.change([], [])
    assert runner.scripts[1:] == ["add element inet secnet-dns dst4 { 10.224.0.3 }\n",
                                  "delete element inet secnet-dns dst4 { 10.224.0.2 }\n"]
    assert m.marked() == {"10.224.0.3"}


@pytest.mark.parametrize("grant, bits", [
    (Grant(257, "10.238.0.5", 4, "any", 0, 0, 0), [152]),
    (Grant(257, "10.238.0.5", 4, "tcp", 0, 65535, 0), [160]),
    (Grant(257, "fd00:238::5", 6, "icmp", 0, 0, 0), [160]),
    (Grant(257, "10.238.0.5", 4, "tcp", 443, 443, 0), [176]),
    (Grant(257, "10.238.0.5", 4, "udp", 1000, 1003, 0), [174]),
])
def test_ebpf_fqdn_prefixes_and_read_back(grant, bits):
    from plugin.enforce.ebpf import fqdn as bpf_fqdn
    keys = bpf_fqdn.prefixes(grant)
    assert [int.from_bytes(k[:4], "little") for k in keys] == bits
    assert all(len(k) == bpf_fqdn.KEY.size == 28 for k in keys)
    g = dataclasses.replace(grant, expires=1100.0, name="api.example.test")
    back = bpf_fqdn.grant_of(keys[0], bpf_fqdn.value(g, 1000.0, 5 * 10**9), 1000.0, 5 * 10**9)
    assert back == g and back.expires == 1100.0 and back.name == "api.example.test"


def test_ebpf_fqdn_maps_share_prefixes_and_delete_expired_entries(monkeypatch):
    import threading

    from plugin.enforce.ebpf import fqdn as bpf_fqdn
    kernel: dict = {}
    monkeypatch.setattr(bpf_fqdn.libbpf, "update", lambda fd, k, v: kernel.__setitem__(k, v))
    monkeypatch.setattr(bpf_fqdn.libbpf, "delete", lambda fd, k: kernel.pop(k, None) is not None)
    clock = Clock()
    maps = bpf_fqdn.FqdnMaps(lambda net: 3, threading.RLock(), clock=clock, boot=lambda: 10**9)
    one = Grant(257, "10.238.0.5", 4, "tcp", 443, 443, clock.now + 100, "a.test")
    two = Grant(257, "10.238.0.5", 4, "tcp", 443, 444, clock.now + 50, "b.test")   # shares 443/16
    maps.allow("n1", [one, two])
    assert len(kernel) == 2
    (shared,) = bpf_fqdn.prefixes(one)
    assert bpf_fqdn.grant_of(shared, kernel[shared], clock.now, 10**9).name == "a.test"  # the longest
    maps.revoke("n1", [one.key])
    assert bpf_fqdn.grant_of(shared, kernel[shared], clock.now, 10**9).name == "b.test"
    clock.now += 60
    assert maps.expire() == 2 and kernel == {}
    maps.close()


@pytest.mark.parametrize("updates, lines", [(True, 1), (False, 3)])
def test_nft_allow_is_one_add_where_the_kernel_updates_timeouts(updates, lines):
    runner = Runner()
    sets = nft.NftFqdnSets(runner, lambda net: "secnet_x", clock=lambda: 1000.0, updates_timeout=updates)
    sets.allow("n", [Grant(257, "10.238.0.5", 4, "tcp", 443, 443, 1060.0, "a.test"),
                     Grant(257, "10.238.0.5", 4, "tcp", 1000, 2000, 1060.0, "a.test")])
    (script,) = runner.scripts
    port, rng = script.splitlines()[:lines], script.splitlines()[lines:]
    assert port[0] == ('add element inet secnet_x fqdn4_port { 257 . 10.238.0.5 . 6 . 443 timeout 60s '
                       'comment "a.test" : 0 }')
    assert [line.split()[0] for line in rng] == ["add", "delete", "add"]   # an interval set: always


def test_nft_a_new_tag_replaces_the_element_and_adds_the_tag_to_the_counter_set():
    """A map element's value cannot change by an add (EEXIST): the old value's add makes
    sure the delete finds it, then the new one; the tag's counter element comes along."""
    runner = Runner()
    sets = nft.NftFqdnSets(runner, lambda net: "secnet_x", clock=lambda: 1000.0, updates_timeout=True)
    grant = Grant(257, "10.238.0.5", 4, "tcp", 443, 443, 1060.0, "a.test", tag=3)
    sets.allow("n", [grant])
    sets.allow("n", [dataclasses.replace(grant, tag=4)])
    sets.revoke("n", [grant.key])
    sets.allow("n", [grant])
    first, second, revoke, again = [script.splitlines() for script in runner.scripts]
    assert again == first[:1], "tag 3's counter element is there already"
    assert first == ['add element inet secnet_x fqdn4_port { 257 . 10.238.0.5 . 6 . 443 timeout 60s '
                     'comment "a.test" : 3 }', "add element inet secnet_x fqdn_tags { 3 }"]
    key = "secnet_x fqdn4_port { 257 . 10.238.0.5 . 6 . 443"
    assert second == [f'add element inet {key} timeout 60s comment "a.test" : 3 }}', f"delete element inet {key} }}",
                      f'add element inet {key} timeout 60s comment "a.test" : 4 }}',
                      "add element inet secnet_x fqdn_tags { 4 }"]
    assert revoke[0].endswith(": 4 }") and revoke[1].startswith("delete element")


class ListingRunner(Runner):
    """nft as a table of FORMAT 9 answers it: the learned sets are sets, not maps."""

    def list_json(self, kind, _family, _table, name):
        if kind == "map":
            raise nft.NftError(f"nft list map inet t {name} failed: No such file or directory")
        if name != "fqdn4_port":
            return {"nftables": []}
        elem = {"elem": {"val": {"concat": [257, "10.238.0.5", "tcp", 443]}, "timeout": 60, "expires": 50}}
        return {"nftables": [{"set": {"name": name, "elem": [elem]}}]}


def test_nft_an_upgrade_reads_the_old_sets_and_rewrites_their_elements_with_a_tag():
    """A table of FORMAT 9 (sets, no tags): the rebuild keeps its elements (tag 0); the
    next write of one goes through the value it was kept with."""
    runner = ListingRunner()
    sets = nft.NftFqdnSets(runner, lambda net: "t", clock=lambda: 1000.0, updates_timeout=True)
    (grant,) = sets.learned("n")
    assert (grant.address, grant.tag, grant.expires) == ("10.238.0.5", 0, 1050.0)
    assert nft.keep_script("t", [grant], 1000.0) == ('add element inet t fqdn4_port { 257 . 10.238.0.5 . 6 . 443 '
                                                    'timeout 50s comment "" : 0 }\n')
    sets.allow("n", [dataclasses.replace(grant, tag=2)])
    assert [line.split(" : ")[-1] for line in runner.scripts[0].splitlines()[::2]] == ["0 }", "2 }"]


class CountingRunner(ListingRunner):
    def __init__(self):
        super().__init__()
        self.listings = 0

    def list_json(self, *args):
        self.listings += 1
        return super().list_json(*args)


def test_nft_maps_written_empty_are_not_read_until_something_is_allowed():
    """CreateNetwork writes a network's tables with empty maps: the DNS service's first
    sight of it (``learned``) reads nothing; an allow, a forget or tables written with
    learned grants kept send it back to the kernel."""
    runner = CountingRunner()
    sets = nft.NftFqdnSets(runner, lambda net: "t", clock=lambda: 1000.0, updates_timeout=True)
    sets.written("n", learned=False)
    assert sets.learned("n") == [] and runner.listings == 0
    (grant,) = sets.learned("m")                      # another network: read (kernel's element)
    sets.allow("n", [dataclasses.replace(grant, tag=2)])
    assert sets.learned("n") != [] and runner.listings > 0
    for step in (lambda: sets.written("n", learned=True), lambda: sets.forget("n")):
        sets.written("n", learned=False)
        step()
        before = runner.listings
        assert sets.learned("n") != [] and runner.listings > before


def test_answer_marks_make_the_table_anew_when_a_rewrite_cannot_keep_it():
    class Refusing(Runner):
        def apply(self, script):
            if "delete table" not in script:
                raise RuntimeError("nft failed: Operation not supported")
            super().apply(script)

    runner = Refusing()
    marks.AnswerMarks(runner, 1, binaries=()).install(["10.224.0.2"])
    (script,) = runner.scripts
    assert script.startswith("table inet secnet-dns { }\ndelete table inet secnet-dns\n")
    assert script.endswith("add element inet secnet-dns dst4 { 10.224.0.2 }\n")


def test_answer_marks_go_with_the_last_held_address_and_come_back_with_the_next():
    """U26-F2: no table and no queue rules while nothing is held."""
    runner = Runner()
    m = marks.AnswerMarks(runner, 1, binaries=())
    m.change(["10.224.0.2"], [])                      # the first: the table with it
    assert runner.scripts[0].startswith("table inet secnet-dns {")
    assert runner.scripts[0].endswith("add element inet secnet-dns dst4 { 10.224.0.2 }\n")
    m.change([], ["10.224.0.2"])                      # the last: the table goes
    assert runner.scripts[1] == "table inet secnet-dns { }\ndelete table inet secnet-dns\n"
    m.repair()                                        # nothing held: nothing put back
    m.change([], [])
    assert len(runner.scripts) == 2 and m.marked() == set()
    assert m.budget_drops() == 0                      # no table, nothing dropped (not "unknown")
    m.change(["10.224.0.3"], [])
    assert runner.scripts[2].startswith("table inet secnet-dns {") and m.marked() == {"10.224.0.3"}


def test_answer_marks_settle_removes_only_an_unused_hold():
    runner = Runner()
    m = marks.AnswerMarks(runner, 1, binaries=())
    m.install(["10.224.0.2"])
    m.settle()
    assert len(runner.scripts) == 1                   # held: kept
    m.install([], keep=True)                          # a daemon's start that adopts an earlier hold
    m.settle()
    assert runner.scripts[-1] == "table inet secnet-dns { }\ndelete table inet secnet-dns\n"
