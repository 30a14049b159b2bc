"""NftGuard, secnet's stand-in for DOCKER-USER under Docker's nftables backend:
the table it renders, reading back what the kernel lists (recorded from
`nft -j list table inet secnet-guard`, tests/unit/data/nft_guard_list.json),
and writing only when the kernel differs."""
from __future__ import annotations

import json
from pathlib import Path

from plugin.enforce.hostfw.nftguard import NftGuard, render
from plugin.enforce.nftables.runner import NftError
from plugin.kernel.marks import PASSED_MARK

LISTED = json.loads((Path(__file__).parent / "data" / "nft_guard_list.json").read_text())
A, B = "a" * 64, "b" * 64


class FakeRunner:
    def __init__(self, listing=None):
        self.listing, self.applied = listing, []

    def apply(self, script):
        self.applied.append(script)

    def list_json(self, *what):
        if self.listing is None:
            raise NftError("No such file or directory")
        return self.listing


def test_render_is_one_transaction_with_two_drops_per_bridge():
    script = render({A: "sn-aaa"})
    assert script.startswith("table inet secnet-guard {}\nflush table inet secnet-guard\n")
    assert "type filter hook forward priority filter + 10; policy accept;" in script
    mark = f"meta mark & {PASSED_MARK:#x} != {PASSED_MARK:#x}"
    for way in ("iifname", "oifname"):
        assert f'{way} "sn-aaa" {mark} counter drop comment "secnet:{A}"' in script
    assert script.count(" drop ") == 2


def test_render_of_nothing_keeps_an_empty_chain():
    assert "drop" not in render({}) and "hook forward" in render({})


def test_owned_reads_the_kernel_listing():
    owned = NftGuard(FakeRunner(LISTED)).owned()
    assert sorted(owned) == sorted([("nft", "sn-aaa", A)] * 2 + [("nft", "sn-bbb", B)] * 2)


def test_owned_without_the_table_is_empty():
    assert NftGuard(FakeRunner(None)).owned() == []


def test_ensure_writes_only_when_the_kernel_differs():
    runner = FakeRunner(LISTED)
    guard = NftGuard(runner)
    assert guard.ensure("sn-aaa", A) is True      # the kernel has B too: rewrite to what we guard
    guard._bridges[B] = "sn-bbb"
    assert guard.ensure("sn-aaa", A) is False     # now the listing is exactly ours
    assert len(runner.applied) == 1


def test_remove_rewrites_without_the_network():
    runner = FakeRunner(None)
    guard = NftGuard(runner)
    guard.ensure("sn-aaa", A)
    guard.ensure("sn-bbb", B)
    guard.remove("sn-aaa", A)
    assert "sn-aaa" not in runner.applied[-1] and "sn-bbb" in runner.applied[-1]


def test_drop_all_deletes_the_table_and_tolerates_its_absence():
    class Missing(FakeRunner):
        def apply(self, script):
            raise NftError("No such file or directory")
    guard = NftGuard(Missing())
    guard.drop_all()
    runner = FakeRunner(LISTED)
    NftGuard(runner).drop_all()
    assert runner.applied == ["delete table inet secnet-guard\n"]
