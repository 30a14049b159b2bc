"""DNS-name rules: how long an answer is held for its rule (issue 15: p50 <= 2 ms,
p99 <= 10 ms), and what 10,000 learned addresses cost a join. A section of
``make bench`` (``bench.run``); alone::

    .venv/bin/python -m bench.dns_hold [--count N] [--fill N] [--backend nftables|ebpf]

Runs on the kernel tier's lab (tests/kernel/nsfixtures.py + dns_lab.py:
namespaces only, no engine, no traffic off the machine), once per backend,
with the daemon's DnsService on the backend. Measured, each over ``count``
answers for new names (every one a new learned address, i.e. one datapath
write before the verdict):

* ``hold``: in the daemon, from the queued packet reaching the handler to
  the handler returning (parse, match, store, datapath write);
* ``rtt learn`` / ``rtt not held``: the container's query round trip for
  names a rule learns, and for a segment without DNS rules (its answers are
  not held). The extra latency of an answer is their difference;
* ``join``: one endpoint's join + leave through the backend (apply_ports, on
  the backend's thread), on a network with ``fill`` addresses learned (10,000
  by default) and on an identical twin network without, alternating join by
  join (ABBA, 600 each);
* ``throughput``: iperf3 (tcp, 2 s) from a container to the outside
  namespace, on the filled network and on its twin, alternating (medians of 6).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "kernel"))

from dns_lab import DNS_RULES, DnsRig, resolve  # noqa: E402
from nsfixtures import NET_ID, OUTSIDE4, Lab  # noqa: E402

from plugin.enforce.fqdn import Grant  # noqa: E402


def pct(values, q) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)


def summary(values) -> dict:
    return {"n": len(values), "p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99),
            "mean_ms": round(statistics.mean(values) * 1000, 3) if values else None}


def rtts(c, names) -> list:
    out = []
    for name in names:
        t = time.perf_counter()
        resolve(c, name)
        out.append(time.perf_counter() - t)
    return out


def paired_joins(labs: tuple, spares: tuple, n: int = 600) -> tuple:
    """Seconds of a join + leave of ``spares[k]`` (as segment ``api``) on ``labs[k]``:
    two identical networks, one of them with the fill, alternating join by join
    (ABBA), so that the shared machine's load falls on both alike. Each is timed
    on its backend's own thread (as the daemon calls it: the lab's hand-off to
    its namespace thread is no part of a join)."""
    ports = [lab.port(c, "api") for lab, c in zip(labs, spares)]

    def one(k: int) -> float:
        lab, port, backend = labs[k], ports[k], labs[k].backend.obj

        def timed() -> float:
            t = time.perf_counter()
            backend.apply_ports(lab.net, [(None, port)])
            backend.apply_ports(lab.net, [(port, None)])
            return time.perf_counter() - t
        return lab.backend.call(timed)
    out: tuple = ([], [])
    for i in range(n):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            out[k].append(one(k))
    return out


def throughput(lab, c, repeats: int = 3) -> float:
    """Median Gbit/s of iperf3 (tcp, 2 s) from container ``c`` to the outside namespace."""
    server = subprocess.Popen(["ip", "netns", "exec", lab.outside.ns, "iperf3", "-s", "-B", OUTSIDE4,
                               "-p", "5299"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        rates = []
        for _ in range(repeats):
            res = subprocess.run(["ip", "netns", "exec", c.ns, "iperf3", "-c", OUTSIDE4, "-p", "5299",
                                  "-t", "2", "-J"], capture_output=True, text=True, timeout=30)
            rates.append(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
        return round(statistics.median(rates), 2)
    finally:
        server.terminate()
        server.wait(5)


def fill_grants(identity: int, n: int) -> list:
    """``n`` learned addresses (10.239.x.y, tcp/443) for ``identity``, an hour each."""
    expires = time.time() + 3600
    return [Grant(identity, f"10.239.{i // 256 % 256}.{i % 256}", 4, "tcp", 443, 443, expires, "fill.test")
            for i in range(n)]


def paired_throughput(labs: tuple, clients: tuple, rounds: int = 3) -> tuple:
    """Median Gbit/s of iperf3 (tcp, 2 s) from ``clients[k]`` to the outside namespace
    of ``labs[k]`` (the filled network and its twin), runs alternating ABBA."""
    out: tuple = ([], [])
    for i in range(2 * rounds):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            out[k].append(throughput(labs[k], clients[k], 1))
    return round(statistics.median(out[0]), 2), round(statistics.median(out[1]), 2)


def fill(lab, grants: list) -> None:
    for start in range(0, len(grants), 1000):
        lab.backend.allow(NET_ID, grants[start:start + 1000])


def bare_twin(backend: str, rules: str) -> tuple:
    """(lab, web, spare): a second network like the measured one, nothing learned."""
    lab = Lab(backend)
    try:
        lab.setup_host()
        web, api, spare = lab.add(3)
        lab.apply(rules, {web: "web", api: "api"}, egress="deny")
        return lab, web, spare
    except BaseException:
        lab.close()
        raise


def measure(backend: str, count: int, fill_n: int) -> dict:
    lab, twin, rig = Lab(backend), None, None
    rules = f"web->dns(*.bench.test):tcp/443 web->{OUTSIDE4}/32:tcp/5299 {DNS_RULES}"
    try:
        lab.setup_host()
        web, api, spare = lab.add(3)
        lab.apply(rules, {web: "web", api: "api"}, egress="deny")
        twin, twin_web, twin_spare = bare_twin(backend, rules)
        out = {"backend": backend, "count": count, "fill": fill_n}
        # the joins and iperf3 first, while both networks are alike but the fill (no DNS rig)
        fill(lab, fill_grants(lab.allocator.identities(NET_ID)["web"], fill_n))
        time.sleep(1)   # the kernel's deferred work on the fill's write is no part of what follows
        out["gbps_after"], out["gbps_before"] = paired_throughput((lab, twin), (web, twin_web))
        after, before = paired_joins((lab, twin), (spare, twin_spare))
        out["join_before"], out["join_after"] = summary(before), summary(after)
        twin.close()
        twin = None
        rig = DnsRig(lab, max_per_network=fill_n + 2 * count + 10)
        for i in range(count):
            rig.server.add(f"n{i}.bench.test", "A", 300, f"10.238.{i // 250}.{i % 250 + 1}")
            rig.server.add(f"m{i}.other.test", "A", 300, f"10.238.{100 + i // 250}.{i % 250 + 1}")
        service = rig.start()
        holds, queue = [], service.obj.queue
        handler = queue.handler

        def timed(packet, outdev):
            t = time.perf_counter()
            handler(packet, outdev)
            holds.append(time.perf_counter() - t)
        queue.handler = timed
        out["rtt_not_held"] = summary(rtts(api, [f"m{i}.other.test" for i in range(count)]))
        holds.clear()
        out["rtt_learn"] = summary(rtts(web, [f"n{i}.bench.test" for i in range(count)]))
        out["hold"] = summary(holds)
        out["extra_p50_ms"] = round(out["rtt_learn"]["p50_ms"] - out["rtt_not_held"]["p50_ms"], 3)
        out["extra_p99_ms"] = round(out["rtt_learn"]["p99_ms"] - out["rtt_not_held"]["p99_ms"], 3)
        out["learned_now"] = len(rig.learned())
        return out
    finally:
        if rig is not None:
            rig.close()
        if twin is not None:
            twin.close()
        lab.close()


def run(sizes=None, backends=("nftables", "ebpf")) -> dict:
    """The ``dns`` section of ``make bench``: {backend: measure(...)}."""
    count = 100 if sizes is not None and sizes.quick else 500
    return {"method": __doc__.strip(), "backends": {b: measure(b, count, 10000) for b in backends}}


def text(result: dict) -> str:
    lines = []
    for name, r in result["backends"].items():
        lines.append(f"{name}: {r['count']} answers, {r['fill']} learned before the learn/join-after runs")
        for key in ("hold", "rtt_learn", "rtt_not_held", "join_before", "join_after"):
            s = r[key]
            lines.append(f"  {key:<14} p50 {s['p50_ms']:7.3f} ms  p99 {s['p99_ms']:7.3f} ms  (n={s['n']})")
        lines.append(f"  extra latency of a held answer: p50 {r['extra_p50_ms']:.3f} ms, "
                     f"p99 {r['extra_p99_ms']:.3f} ms")
        ratio = r["gbps_after"] / r["gbps_before"] if r.get("gbps_before") else 0
        join = r["join_before"]["p50_ms"] / r["join_after"]["p50_ms"] if r["join_after"]["p50_ms"] else 0
        lines.append(f"  throughput {r.get('gbps_before')} -> {r.get('gbps_after')} Gbit/s ({ratio:.2f}x); "
                     f"join speed with the fill {join:.2f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--fill", type=int, default=10000)
    ap.add_argument("--backend", action="append", choices=("nftables", "ebpf"))
    args = ap.parse_args()
    result = {"backends": {b: measure(b, args.count, args.fill) for b in args.backend or ("nftables", "ebpf")}}
    print(text(result))


if __name__ == "__main__":
    main()
