"""What a ``pol_port`` element's counter costs the kernel, and a flush that keeps a few (issue 12).

Run as root: ``python -m bench.nft_counters [--elements N] [--rounds R] [--no-listen]``. In a
throwaway network namespace, one table per variant holds a ``pol_port`` set of N elements
(``bench.nft_swap.elements``: 100 x 100 identity pairs, tcp, a port per block) plus one kept
element (the flow's rule of ``bench.handler``'s world). Each round, in an order that
alternates between rounds, each variant replaces its N elements by N others in one batch
(``plugin.enforce.nftables.netlink.ElementWriter``):

* ``counter``: the set as FORMAT 15 declared it (``counter``: one per element), deletions
  then additions (what a ``policy set`` sent before ``hit_port``);
* ``counter_size``: the same with a ``size`` hint (a fixed hash table instead of the
  resizable one, and a hard element limit);
* ``plain``: no counter (FORMAT 16: the elements are counted in ``hit_port``);
* ``plain_flush``: no counter, the set flushed, the N others and the kept one added
  (``ElementDelta.kept``: what FORMAT 16 sends when few elements stay).

Figure: the CPU time of the thread in ``send()`` (nf_tables runs the whole batch there,
commit and change notifications included), per variant the median and the median of the
per-round ratios to ``counter``. A socket of the namespace joins ``NFNLGRP_NFTABLES`` (the
daemon's drift watcher does) unless ``--no-listen``; the kernel builds notifications when any
socket of the host listens, so ``--no-listen`` is only meaningful on a host with none.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import uuid

from plugin.enforce.nftables.elements import ElementDelta
from plugin.enforce.nftables.runner import NftRunner
from plugin.kernel import netns
from plugin.kernel.nftsocket import open_socket

from .nft_swap import TimedWriter, elements, root_listener

KEY = "type mark . mark . inet_proto . inet_service;"
VARIANTS = {"counter": f"{KEY} counter;", "counter_size": f"{KEY} counter; size 65536;",
            "plain": KEY, "plain_flush": KEY}
KEPT = (99, 99, 6, 5201)


def measure(n: int, rounds: int, listen: bool) -> dict:
    listener = open_socket() if listen else None
    nft, writer = NftRunner(), TimedWriter()
    a, b = {**elements(n, 1), KEPT: None}, {**elements(n, 2), KEPT: None}
    names = list(VARIANTS)
    got: dict = {name: [] for name in names}
    for name in names:
        nft.apply(f"table inet nc_{name} {{\n set pol_port {{ {VARIANTS[name]} }}\n}}")
        writer.send_timed(writer.batch(f"nc_{name}", ElementDelta(add={"pol_port": a})))
    now = dict.fromkeys(names, a)
    try:
        for rnd in range(rounds + 1):   # the first: warm-up
            for name in names if rnd % 2 == 0 else names[::-1]:
                old = now[name]
                new = b if old is a else a
                if name == "plain_flush":
                    batch = writer.batch(f"nc_{name}", ElementDelta(add={"pol_port": new}), flush="pol_port")
                else:
                    batch = writer.batch(f"nc_{name}", ElementDelta(
                        delete={"pol_port": {e: None for e in old if e not in new}},
                        add={"pol_port": {e: None for e in new if e not in old}}))
                writer.send_timed(batch)
                now[name] = new
                if rnd:
                    got[name].append(writer.last[0])
    finally:
        for name in names:
            nft.apply(f"delete table inet nc_{name}")
        writer.close()
        if listener is not None:
            listener.close()
    base = got["counter"]
    return {name: {"cpu_ms_median": round(statistics.median(v), 1),
                   "ratio_to_counter": round(statistics.median([x / y for x, y in zip(v, base)]), 3)}
            for name, v in got.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--no-listen", action="store_true")
    args = parser.parse_args()
    name = f"snctr-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        host = root_listener()
        found = netns.run_in(f"/run/netns/{name}", measure, args.elements, args.rounds, not args.no_listen,
                             timeout=900)
        print(json.dumps({"elements": args.elements, "rounds": args.rounds, "listen": not args.no_listen,
                          "root_namespace_listener": host, **found}, indent=1))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
