"""plugin.enforce.nftables.runner's kept libnftables context, against the real kernel.

A runner keeps one context (and its nf_tables socket) between commands, so that no
command waits for the kernel's cleanup of the last commit when its socket closes (the
runner module says why). Kept, it must still (a) write into the namespace of the thread
that calls it, never into the one the context was made in, and (b) hold no ruleset cache
between commands (a listing of a large table is tens of MiB of libnftables' heap).
"""
from __future__ import annotations

import ctypes
import json
import subprocess

import pytest

from nsfixtures import InNamespace
from plugin.enforce.nftables.runner import NftRunner

pytestmark = pytest.mark.kernel


def tables(ns) -> set:
    out = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-j", "list", "tables"],
                         capture_output=True, text=True, check=True).stdout
    return {o["table"]["name"] for o in json.loads(out)["nftables"] if "table" in o}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_in_use() -> int:
    """Bytes of this process' malloc heap in use (glibc ``mallinfo2``: used blocks and mmapped ones)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def test_a_kept_context_writes_into_the_namespace_of_the_calling_thread(netns, other_netns):
    runner = InNamespace(netns.name, NftRunner)   # made, and first called, inside netns
    elsewhere = InNamespace(other_netns.name, lambda: None)
    try:
        runner.apply("add table inet first\n")                          # its context kept: netns
        elsewhere.call(runner.obj.apply, "add table inet second\n")     # a thread in the other one
        runner.apply("add table inet third\n")                          # the kept context again
        assert tables(netns) == {"first", "third"}
        assert tables(other_netns) == {"second"}
        assert elsewhere.call(runner.obj.list_json, "tables")["nftables"][1]["table"]["name"] == "second"
    finally:
        elsewhere.shutdown_plain()
        runner.shutdown()   # close(): the kept context and its socket go


def test_a_kept_context_holds_no_ruleset_cache_and_no_large_output_between_commands(netns):
    runner = InNamespace(netns.name, NftRunner)
    try:
        runner.list_json("tables")   # the kept context made, in an empty namespace
        rules = "".join(f"add rule inet big c ip saddr 10.{i >> 8}.{i & 255}.1 tcp dport {i + 1} counter accept\n"
                        for i in range(10_000))
        runner.apply("add table inet big\nadd chain inet big c\n" + rules)   # large: a child nft
        before = runner.call(heap_in_use)
        assert runner.list_json("tables")["nftables"][1]["table"]["name"] == "big"
        # "list tables" fills the cache with the whole ruleset: ~23 MiB here if it were kept
        grown = runner.call(heap_in_use) - before
        assert grown < 2 << 20, f"{grown >> 20} MiB kept after listing the tables"
        listed = runner.list_json("table", "inet", "big")
        assert sum("rule" in o for o in listed["nftables"]) == 10_000
        del listed
        # its 3.4 MB of output: the context's buffer would keep ~5.5 MiB
        grown = runner.call(heap_in_use) - before
        assert grown < 2 << 20, f"{grown >> 20} MiB kept after listing the large table"
        runner.apply("delete table inet big\n")   # a kept context goes on working
        assert tables(netns) == set()
    finally:
        runner.shutdown()
