"""The nftables datapath at scale, in throwaway namespaces (root; no Docker, no daemon).

Issue 12's "throughput with 1,000 endpoints and 10,000 rules >= 0.98x without",
taken apart. Pairs of namespaces on a Linux bridge with br_netfilter on and
secnet's nftables backend (as ``bench.ebpf_datapath``'s ``nftables`` pair: the
flow ``a->b:tcp/5201`` allowed), measured round-robin with iperf3, ping and
sockperf:

* ``nft``: the two measured endpoints only;
* ``nft+ports`` (with ``--endpoints N``): N more endpoints on the same bridge,
  each a real veth whose host side is a bridge port and whose peer stays down
  (as ``bench/scale.py``'s endpoints: no container takes them), with every
  element the backend gives an endpoint (identity maps, anti-spoofing sets);
* ``nft+rules`` (with ``--rules R``): R more rules between 100 other segments
  (``s<i>->s<i*7 % 100>:tcp/<port>``);
* ``nft+both``: both at once (what ``make bench``'s ``secnet-scale`` carries);
* ``nft+devices`` (with ``--devices D``): D more devices in the bridge's namespace
  (veth pairs, down), on no bridge and with no elements: what a namespace with many devices costs
  by itself (br_netfilter finds a bridged packet's input port by its ifindex,
  ``dev_get_by_index_rcu``: a walk of one of 256 hash chains of the namespace's
  devices, per packet).

Every round runs every pair once (every other round backwards); the figure of
a pair is the median of its **per-round ratios** to ``nft`` (a ratio within a
round is free of the machine's drift), with the medians of the raw figures.

``--perf SECS`` then records ``perf record -a -g`` (cpu-clock) for SECS
seconds of iperf3 on ``nft`` and on ``nft+both`` and prints the share of
samples in the nftables and bridge symbols of each.

Run: ``.venv/bin/python -m bench.nft_scale [--endpoints 1000] [--rules 10000]
[--devices 2000]
[--no-throughput] [--secs 4] [--repeats 6] [--perf 5] [--json FILE]``.
Subnets 10.212.0.0/16 (measured pairs 10.212.<k>.2/.3; endpoints' elements
10.212.16.0/20, no traffic to them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid

from .apply_script import apply_script
from .ebpf_datapath import bridge_host, iperf, ns_add, ns_del_all, rr, rtt, save_json, sh

NET_ID = "be0e" + "0" * 60


def bridge_pair(tag: str, octet: int, made: list) -> tuple:
    """(host ns, client ns, server ns, server address): a bridge in ``host`` with two
    namespaces on it, br_netfilter on."""
    host = f"sns-{tag}"
    bridge_host(host, made)
    ends = []
    for veth, last in (("sva", 2), ("svb", 3)):
        ns = f"{host}-{veth[-1]}"
        ns_add(ns, made)
        sh("ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", host, "link", "set", veth, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "address", f"02:42:0a:d4:{octet:02x}:{last:02x}")
        sh("ip", "-n", ns, "addr", "add", f"10.212.{octet}.{last}/16", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        ends.append(ns)
    return host, ends[0], ends[1], f"10.212.{octet}.3"


def extra_ports(host: str, n: int, devices: int = 0) -> None:
    """``n`` veths on ``host``'s bridge (``sx<k>``), peers down (as the scale bench's), and
    ``devices`` more devices on no bridge (veth pairs ``sd<k>``/``se<k>``, down)."""
    lines = []
    for k in range(n):
        lines += [f"link add sx{k} type veth peer name sy{k}", f"link set sx{k} master br0 up"]
    lines += [f"link add sd{k} type veth peer name se{k}" for k in range(devices // 2)]   # no dummy driver here
    subprocess.run(["ip", "-n", host, "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                   check=True, capture_output=True)


def _ports(octet: int, endpoints: int) -> str:
    """The measured pair's ports and ``endpoints`` more (``sx<k>``, 100 segments), as source."""
    pair = (f"[Port('ea', 'sva', '02:42:0a:d4:{octet:02x}:02', '10.212.{octet}.2', identity=256), "
            f"Port('eb', 'svb', '02:42:0a:d4:{octet:02x}:03', '10.212.{octet}.3', identity=257)]")
    more = (f"[Port(f'ex{{k}}', f'sx{{k}}', f'02:42:0a:d4:{{16 + k // 256:02x}}:{{k % 256:02x}}', "
            f"f'10.212.{{16 + k // 256}}.{{k % 256}}', identity=300 + k % 100) for k in range({endpoints})]")
    return f"{pair} + {more}"


def enforce(host: str, octet: int, endpoints: int, rules: int, devices: int = 0) -> None:
    """secnet's nftables backend in ``host``: the measured pair, ``endpoints`` more ports and
    ``rules`` more rules, in one apply_network (as a restore does); ``devices`` more devices."""
    if endpoints or devices:
        extra_ports(host, endpoints, devices)
    code = apply_script(host, "a->b:tcp/5201, a->b:tcp/5202, a->b:icmp", _ports(octet, endpoints),
                        f"NetworkSpec({NET_ID!r}, 'br0', ('10.212.0.0/16',))", rules)
    sh(".venv/bin/python", "-c", code, timeout=600)


def make_pairs(args, tag: str, made: list) -> dict:
    """name -> (host ns, client ns, server ns, server address)."""
    want = {"nft": (0, 0, 0)}
    if args.endpoints:
        want["nft+ports"] = (args.endpoints, 0, 0)
    if args.rules:
        want["nft+rules"] = (0, args.rules, 0)
    if args.endpoints and args.rules:
        want["nft+both"] = (args.endpoints, args.rules, 0)
    if args.devices:
        want["nft+devices"] = (0, 0, args.devices)
    pairs = {}
    for octet, (name, (n, r, d)) in enumerate(want.items(), start=1):
        host, a, b, ip = bridge_pair(f"{tag}{octet}", octet, made)
        enforce(host, octet, n, r, d)
        pairs[name] = (host, a, b, ip)
    return pairs


def rounds(pairs: dict, args) -> dict:
    """Every pair once per round, every other round backwards."""
    got = {k: {"gbps": [], "rtt_us": [], "rr_us": []} for k in pairs}
    for i in range(args.repeats):
        for name, (_h, c, s, ip) in list(pairs.items())[::1 if i % 2 == 0 else -1]:
            if not args.no_throughput:
                got[name]["gbps"].append(iperf(c, s, ip, args.secs))
            got[name]["rtt_us"].append(rtt(c, ip))
            got[name]["rr_us"].append(rr(c, s, ip, min(args.secs, 3)))
    return got


def summary(got: dict) -> dict:
    """Per pair and figure: median, min, max and the median of the per-round ratios to ``nft``."""
    out = {}
    for name, m in got.items():
        out[name] = {}
        for k, v in m.items():
            ratios = [a / b for a, b in zip(v, got["nft"][k]) if b]
            if not v:
                continue
            out[name][k] = {"median": statistics.median(v), "min": min(v), "max": max(v),
                            "ratio": statistics.median(ratios),
                            "ratios": [round(x, 3) for x in ratios]}
    return out


SYMBOLS = ("nft_", "nf_", "br_", "ipt_", "ip6t_", "rhashtable", "jhash", "pipapo")


def perf_shares(pair: tuple, secs: int) -> dict:
    """Share of cpu-clock samples (whole machine) per symbol group while iperf3 runs on ``pair``."""
    _h, c, s, ip = pair
    with tempfile.TemporaryDirectory(prefix="snbench-perf-") as tmp:
        data = os.path.join(tmp, "perf.data")
        rec = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "cpu-clock", "-o", data, "--", "sleep",
                                str(secs + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        iperf(c, s, ip, secs)
        rec.wait(timeout=secs + 30)
        rep = sh("perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym", "-q",
                 "--percent-limit", "0.2").stdout
    rows = []
    for line in rep.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%"):
            rows.append((float(parts[0][:-1]), parts[-1]))
    groups = {g: round(sum(p for p, s in rows if s.startswith(g)), 2) for g in SYMBOLS}
    return {"groups": groups, "top": rows[:25]}


def arguments():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--devices", type=int, default=0, help="also a pair with this many more devices (veths, down, on no bridge)")
    ap.add_argument("--no-throughput", action="store_true", help="latencies only (more rounds in the time)")
    ap.add_argument("--secs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--perf", type=int, default=0, help="also perf record SECS s of iperf3 on nft and nft+both")
    ap.add_argument("--json", help="also write the raw figures to this file")
    return ap.parse_args()


def main() -> int:
    args = arguments()
    tag, made = uuid.uuid4().hex[:4], []
    try:
        pairs = make_pairs(args, tag, made)
        got = rounds(pairs, args)
        res = {"args": vars(args), "raw": got, "summary": summary(got)}
        for name, s in res["summary"].items():
            print(f"{name:10s} " + "  ".join(
                f"{k} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f}) x{v['ratio']:.3f} {v['ratios']}"
                for k, v in s.items()))
        if args.perf:
            res["perf"] = {n: perf_shares(pairs[n], args.perf) for n in ("nft", "nft+both") if n in pairs}
            for n, p in res["perf"].items():
                print(n, p["groups"])
                for pct, sym in p["top"][:15]:
                    print(f"   {pct:6.2f}% {sym}")
        save_json(args.json, res)
    finally:
        ns_del_all(made)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
