"""Where an eBPF pair's throughput differs from a bare veth's: GSO sizes, the programs' CPU (root; ~2 min).

Pairs of namespaces (``bench.ebpf_datapath``'s): ``veth``, ``ebpf``, ``floor`` (a program that
only redirects) and the same three with Docker's embedded-DNS NAT table in both ends
(``+nat``: conntrack on, as in Docker's containers). ``--rounds`` interleaved rounds of one
iperf3 run per pair (``ebpf_datapath.iperf_run``: the same CPU pinning on every pair), every
other round backwards; around each run, the SNMP counters of both ends (/proc/net/snmp, /proc/net/netstat):

* ``rx_bytes_per_pkt``: IpExtInOctets / IpInReceives at the server -- the mean size of what
  its IP layer receives (~64 KB when GSO/TSO super-packets cross the path whole, ~1.5 KB when
  something segments them);
* ``tx_segs_per_pkt``: TcpOutSegs / IpOutRequests at the client (TCP segments per packet sent);
* ``retrans``: TcpRetransSegs at the client (drops on the path or in a full backlog);

and, for the ``ebpf`` pairs, the programs' runs per second and ns per run under iperf3
(kernel.bpf_stats_enabled on for the run): their share of one CPU. Figures: per pair the
median, and the median (min-max) of the per-round ratios to ``veth`` and to ``veth+nat``.

Run: ``.venv/bin/python -m bench.ebpf_gap [--rounds 8] [--secs 2] [--json FILE]``.
Subnets 10.218.{2,7,8,9,10}.0/24 (bench-only namespaces, deleted at the end).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid

from . import ebpf_datapath as edp


def nstat(ns: str) -> dict:
    """SNMP counters of namespace ``ns``, name -> value ("IpInReceives", "IpExtInOctets", ...): its
    /proc/net/snmp and /proc/net/netstat (per network namespace), header and value lines in pairs."""
    out = {}
    text = edp.sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp", "/proc/net/netstat").stdout.splitlines()
    for head, vals in zip(text[::2], text[1::2]):
        group, names = head.split(":", 1)
        out.update({group + k: int(v) for k, v in zip(names.split(), vals.split(":", 1)[1].split())})
    return out


def pairs_for(tag: str, made: list, pin_root: str, work: str) -> tuple:
    """name -> (client, server, address); name -> pin root of the eBPF pairs."""
    va, vb, vip = edp.veth_pair(tag, made)
    na, nb, nip = edp.veth_pair(tag + "d", made)
    edp.docker_nat(na, nb)
    h2, ea, eb, eip = edp.bridge_pair(tag + "y", 2, made)
    edp.enforce(h2, 2, pin_root + "e")
    h7, da, db, dip = edp.bridge_pair(tag + "d", 7, made)
    edp.enforce(h7, 7, pin_root + "n")
    edp.docker_nat(da, db)
    h8, fa, fb, fip = edp.bridge_pair(tag + "f", 8, made)
    edp.floor(h8, 8, work)
    h10, ga, gb, gip = edp.bridge_pair(tag + "g", 10, made)
    edp.floor(h10, 10, work)
    edp.docker_nat(ga, gb)
    return ({"veth": (va, vb, vip), "ebpf": (ea, eb, eip), "floor": (fa, fb, fip), "veth+nat": (na, nb, nip),
             "ebpf+nat": (da, db, dip), "floor+nat": (ga, gb, gip)},
            {"ebpf": pin_root + "e", "ebpf+nat": pin_root + "n"})


def one_run(pair: tuple, secs: int, pins: str = None) -> dict:
    """One iperf3 run of ``pair`` with its nstat deltas (and the programs' share when ``pins``)."""
    client, server, ip = pair
    s0, c0 = nstat(server), nstat(client)
    p0, t0 = (edp.prog_stats(pins) if pins else {}), time.monotonic()
    gbps = edp.iperf(client, server, ip, secs)
    wall = time.monotonic() - t0
    s1, c1 = nstat(server), nstat(client)
    d = lambda a, b, k: b.get(k, 0) - a.get(k, 0)   # noqa: E731
    out = {"gbps": gbps, "rx_bytes_per_pkt": d(s0, s1, "IpExtInOctets") / max(d(s0, s1, "IpInReceives"), 1),
           "tx_segs_per_pkt": d(c0, c1, "TcpOutSegs") / max(d(c0, c1, "IpOutRequests"), 1),
           "retrans": d(c0, c1, "TcpRetransSegs")}
    if pins:
        p1 = edp.prog_stats(pins)
        ns, runs = (sum(p1[k][i] - p0[k][i] for k in p1) for i in (0, 1))
        out.update(runs_per_s=runs / wall, ns_per_run=ns / max(runs, 1), cpu_share=ns / 1e9 / wall)
    return out


def show(got: dict) -> None:
    med = statistics.median
    for name, runs in got.items():
        line = f"{name:10s} {med(r['gbps'] for r in runs):5.2f} Gbit/s"
        for ref in ("veth", "veth+nat"):
            x = sorted(a["gbps"] / b["gbps"] for a, b in zip(runs, got[ref]))
            line += f"  /{ref} {med(x):.2f} ({x[0]:.2f}-{x[-1]:.2f})"
        line += (f"  rx B/pkt {med(r['rx_bytes_per_pkt'] for r in runs):.0f}  tx segs/pkt "
                 f"{med(r['tx_segs_per_pkt'] for r in runs):.1f}  retrans {sum(r['retrans'] for r in runs)}")
        if "cpu_share" in runs[0]:
            line += (f"  programs {med(r['runs_per_s'] for r in runs):.0f} runs/s, {med(r['ns_per_run'] for r in runs):.0f}"
                     f" ns/run, {100 * med(r['cpu_share'] for r in runs):.2f} % of one CPU")
        print(line)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--secs", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    tag, made = uuid.uuid4().hex[:4], []
    pin_root, work = f"/sys/fs/bpf/secnet-gap-{tag}", tempfile.mkdtemp(prefix="snbench-gap-")
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        was = f.read().strip()
    try:
        pairs, pins = pairs_for(tag, made, pin_root, work)
        for client, _server, ip in pairs.values():
            edp.rtt(client, ip)   # neighbours and flows known first
        edp.sh("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
        got = {name: [] for name in pairs}
        for r in range(args.rounds):
            for name in list(pairs)[::1 if r % 2 == 0 else -1]:
                got[name].append(one_run(pairs[name], args.secs, pins.get(name)))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]['gbps']:.2f}" for k, v in got.items()),
                  flush=True)
        show(got)
        edp.save_json(args.json, got)
    finally:
        edp.sh("sysctl", "-qw", f"kernel.bpf_stats_enabled={was}")
        edp.ns_del_all(made)
        edp.sh("rm", "-rf", pin_root + "e", pin_root + "n", check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
