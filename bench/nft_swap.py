"""The kernel's part of replacing N policy elements by N others, three ways (issue 12).

Run as root: ``python -m bench.nft_swap [--elements N] [--rounds R] [--listen]``. In a
throwaway network namespace, ``pol_port`` sets as secnet declares them (``type mark .
mark . inet_proto . inet_service; counter``) hold N elements of
``bench.scale.sweep_rules`` shape (100 x 100 identity pairs, tcp, a port per block).
Each round runs, in an order that alternates between rounds, one batch (one
transaction, ``plugin.enforce.nftables.netlink.ElementWriter``) of each variant:

* ``delta``: the N elements in force deleted and N others added (what secnet sends
  today for a ``policy set`` that replaces every rule);
* ``flush``: the set flushed (``NFT_MSG_DELSETELEM`` without elements) and the N
  others added (only right when no element is kept: kept rules' counters restart);
* ``fill``: the N others added to an empty set (what a swap to a new set or a
  standby generation costs on the command's path); ``drain``: the N old ones then
  deleted in a batch of their own (the swap's cleanup, off the command's path).

Measured: the CPU time of the thread in ``send()`` (``time.thread_time``; nf_tables
handles the whole batch, commit and change notifications included, in the sender's
context: ``nfnetlink_rcv_batch``), and wall time. Freeing deleted elements happens
later in a kernel worker and is not counted (nor is it on the command's path).
The kernel builds one notification per element only when some socket of the *host*
(any namespace: ``netlink_has_listeners`` reads one bitmap per protocol) joined
``NFNLGRP_NFTABLES``; ``--listen`` joins one in the namespace so that the figures are
those of a host where secnet's daemon runs. The output says whether the root
namespace had such a listener (``/proc/1/net/netlink``; other namespaces' are not
visible there). Prints JSON: per variant the median and min (ms), and per variant
the median of the per-round ratios to ``delta``. ``--only VARIANT`` (repeatable): those
variants alone, e.g. under ``perf record -g`` for where one of them spends its time.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import time
import uuid

from plugin.enforce.nftables.elements import ElementDelta
from plugin.enforce.nftables.netlink import (NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFT_MSG_DELSETELEM,
                                             NFT_MSG_NEWSETELEM, NLM_F_ACK, ElementWriter)
from plugin.enforce.nftables.nftdump import (NFNL_SUBSYS_NFTABLES, NFTA_SET_ELEM_LIST_SET,
                                             NFTA_SET_ELEM_LIST_TABLE, NLM_F_REQUEST, NLMSG_ERROR, _attr)
from plugin.enforce.nftables.runner import NftRunner
from plugin.kernel import netns
from plugin.kernel.nftsocket import open_socket

from .common import stats

DECLARATION = "set pol_port { type mark . mark . inet_proto . inet_service; counter; }"
VARIANTS = ("delta", "flush", "fill")
NFPROTO_INET = 1


class TimedWriter(ElementWriter):
    """An ElementWriter that keeps the thread CPU and wall time (ms) of its last ``send()``
    and sends extra messages (a flush) at the head of the batch."""

    last = (0.0, 0.0)

    def send_timed(self, batch: bytes) -> None:
        sock = self._socket()
        sock.setsockopt(socket.SOL_SOCKET, 32, max(len(batch) * 2, 1 << 16))   # SO_SNDBUFFORCE
        cpu, wall = time.thread_time(), time.perf_counter()
        sock.send(batch)
        self.last = ((time.thread_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000)
        failure = None
        sock.setblocking(False)
        try:
            while True:
                failure = _refused(sock.recv(1 << 20)) or failure
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
        if failure:
            raise OSError(failure, f"nf_tables refused the batch: {failure}")

    def batch(self, table: str, delta: ElementDelta, flush: str = "") -> bytes:
        """One batch: a flush of set ``flush`` (if named), then ``delta``'s deletions and additions."""
        names: dict = {}
        parts = [self._batch_marker(NFNL_MSG_BATCH_BEGIN)]
        if flush:
            body = _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + \
                _attr(NFTA_SET_ELEM_LIST_SET, flush.encode() + b"\0")
            parts.append(self._message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM, NFPROTO_INET,
                                       body, NLM_F_REQUEST | NLM_F_ACK))
        parts += self._messages(table, NFT_MSG_DELSETELEM, delta.delete, names)
        parts += self._messages(table, NFT_MSG_NEWSETELEM, delta.add, names)
        parts.append(self._batch_marker(NFNL_MSG_BATCH_END))
        return b"".join(parts)


def _refused(buf: bytes) -> int:
    """The errno of the first refused message in ``buf`` (acknowledgements), else 0."""
    pos = 0
    while pos + 20 <= len(buf):
        length, kind = struct.unpack_from("=IH", buf, pos)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", buf, pos + 16)[0]
            if code:
                return code
        pos += (length + 3) & ~3
    return 0


def elements(n: int, variant: int) -> dict:
    """``n`` distinct pol_port elements (src mark, dst mark, tcp, port); ``variant`` moves every port."""
    return {(k % 100 + 1, (k // 100) % 100 + 1, 6, 1000 + (k // 10000) * 10 + variant): None
            for k in range(n)}


def one_round(nft: NftRunner, writer: TimedWriter, rnd: int, state: dict, only: tuple = VARIANTS) -> dict:
    """Each variant of ``only`` once (order by round); ``state['cur']``: the elements table swa holds."""
    out = {}
    order = only if rnd % 2 == 0 else tuple(reversed(only))
    for variant in order:
        old = state["cur"]
        new = state["b"] if old is state["a"] else state["a"]
        if variant == "fill":
            nft.apply("table inet swb {\n " + DECLARATION + "\n}")
            try:
                writer.send_timed(writer.batch("swb", ElementDelta(add={"pol_port": new})))
                out["fill"] = writer.last
                writer.send_timed(writer.batch("swb", ElementDelta(delete={"pol_port": new})))
                out["drain"] = writer.last
            finally:
                nft.apply("delete table inet swb")
            continue
        delta = ElementDelta(delete={} if variant == "flush" else {"pol_port": old}, add={"pol_port": new})
        writer.send_timed(writer.batch("swa", delta, flush="pol_port" if variant == "flush" else ""))
        out[variant] = writer.last
        state["cur"] = new
    return out


def measure(n: int, rounds: int, listen: bool, only: tuple = VARIANTS) -> dict:
    """All rounds in the calling thread's namespace; the figures per variant."""
    listener = open_socket() if listen else None
    nft, writer = NftRunner(), TimedWriter()
    state = {"a": elements(n, 1), "b": elements(n, 2)}
    state["cur"] = state["a"]
    nft.apply("table inet swa {\n " + DECLARATION + "\n}")
    try:
        writer.send_timed(writer.batch("swa", ElementDelta(add={"pol_port": state["a"]})))
        got = [one_round(nft, writer, r, state, only) for r in range(rounds + 1)][1:]   # first: warm-up
    finally:
        nft.apply("delete table inet swa")
        writer.close()
        if listener is not None:
            listener.close()
    return summary(got, only)


def summary(got: list, only: tuple = VARIANTS) -> dict:
    out = {}
    for variant in only + (("drain",) if "fill" in only else ()):
        cpu = [r[variant][0] for r in got]
        wall = [r[variant][1] for r in got]
        entry = {"cpu_ms": _short(stats(cpu)), "wall_ms": _short(stats(wall))}
        if variant != "delta" and "delta" in only:
            entry["cpu_ratio_to_delta"] = _median([r[variant][0] / r["delta"][0] for r in got])
            entry["wall_ratio_to_delta"] = _median([r[variant][1] / r["delta"][1] for r in got])
        out[variant] = entry
    return out


def _short(figures: dict) -> dict:
    return {k: round(v, 2) for k, v in figures.items() if k in ("median", "min", "max", "n")}


def _median(values: list) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return round(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2, 3)


def root_listener() -> bool:
    """Whether a socket of the root namespace joined NFNLGRP_NFTABLES (group 7: bit 6)."""
    try:
        with open("/proc/1/net/netlink") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return False
    return any(r[1] == "12" and int(r[3], 16) & 0x40 for r in rows if len(r) > 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--listen", action="store_true", help="join NFNLGRP_NFTABLES in the namespace")
    parser.add_argument("--only", choices=VARIANTS, action="append",
                        help="run only this variant (repeatable): e.g. under perf record -g")
    args = parser.parse_args()
    only = tuple(v for v in VARIANTS if v in (args.only or VARIANTS))
    name = f"snswap-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        host = root_listener()
        found = netns.run_in(f"/run/netns/{name}", measure, args.elements, args.rounds, args.listen,
                             only, timeout=900)
        print(json.dumps({"elements": args.elements, "rounds": args.rounds, "listen": args.listen,
                          "root_namespace_listener": host, **found}, indent=1))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
