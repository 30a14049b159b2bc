"""How long a DNS answer is held for its rule (issue: p50 <= 2 ms, p99 <= 10 ms).

    .venv/bin/python -m bench.dns_hold [--count N] [--fill N]

Runs in the kernel tier's DNS lab (tests/kernel/dns_lab.py: namespaces only,
no engine, no traffic off the machine). Measured, each over ``--count``
answers for new names (every one a new learned address, i.e. one nft
transaction before the verdict):

* ``hold``: in the daemon, from the queued packet reaching the handler to
  the handler returning (parse, match, store, nft transaction): the time the
  answer is held beyond reading and the verdict;
* ``rtt learn`` / ``rtt queued, no rule`` / ``rtt not queued``: the
  container's query round trip, for names a rule learns, for names no rule
  matches (queued and passed at once), and with no queue rule at all. The
  extra latency of an answer is ``rtt learn`` minus ``rtt not queued``.

``--fill N`` first puts N learned addresses in the set (the issue's 10,000).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.kernel.dns_lab import BRIDGE, NET, TABLE, DnsLab


def pct(values, q) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def line(name, values) -> str:
    return (f"{name:<24} n={len(values):<5} p50 {pct(values, 0.5):6.2f} ms  p99 {pct(values, 0.99):6.2f} ms"
            f"  mean {statistics.mean(values) * 1000:6.2f} ms")


def rtts(lab, names) -> list:
    out = []
    for name in names:
        t = time.perf_counter()
        lab.resolve("web", name)
        out.append(time.perf_counter() - t)
    return out


def fill(lab, n: int) -> None:
    """Put ``n`` elements for identity 258 in fqdn4 (one transaction per 1,000)."""
    for start in range(0, n, 1000):
        elems = ", ".join(f"258 . 10.{230 + i // 65536}.{i // 256 % 256}.{i % 256} . 6 . 443 timeout 1h"
                          for i in range(start, min(n, start + 1000)))
        lab.runner.apply(f"add element inet {TABLE} fqdn4_port {{ {elems} }}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--fill", type=int, default=0)
    args = ap.parse_args()
    lab = DnsLab(Path(tempfile.mkdtemp()), max_per_network=max(4096, args.fill + 2 * args.count + 10))
    try:
        lab.setup()
        for i in range(args.count):
            lab.server.add(f"n{i}.bench.test", "A", 300, f"10.229.{i // 250}.{i % 250 + 1}")
            lab.server.add(f"m{i}.other.test", "A", 300, f"10.229.{100 + i // 250}.{i % 250 + 1}")
        if args.fill:
            fill(lab, args.fill)
        base = rtts(lab, [f"m{i}.other.test" for i in range(args.count)])
        lab.start_learning("web->dns(*.bench.test):tcp/443")
        holds = []
        handler = lab.queue.handler

        def timed(packet, outdev):
            t = time.perf_counter()
            handler(packet, outdev)
            holds.append(time.perf_counter() - t)

        lab.queue.handler = timed
        queued = rtts(lab, [f"m{i}.other.test" for i in range(args.count)])
        holds.clear()
        learned = rtts(lab, [f"n{i}.bench.test" for i in range(args.count)])
        print(f"DNS hold, {args.count} answers, {args.fill} addresses learned before, bridge {BRIDGE}")
        print(line("hold (in the daemon)", holds))
        print(line("rtt learn", learned))
        print(line("rtt queued, no rule", queued))
        print(line("rtt not queued", base))
        print(f"extra latency p50 {pct(learned, 0.5) - pct(base, 0.5):.2f} ms, "
              f"p99 {pct(learned, 0.99) - pct(base, 0.99):.2f} ms; elements now {len(lab.sets.learned(NET))}")
    finally:
        lab.close()


if __name__ == "__main__":
    main()
