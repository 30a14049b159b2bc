"""What other networks' nftables tables and a network's own scale cost a frame (root; ~3 min).

Issue 12's "throughput with 1,000 endpoints + 10,000 rules >= 0.98x without". Pairs of
namespaces on a Linux bridge with br_netfilter on and secnet's nftables backend, each
pair in a host namespace of its own (so that only the tables named here run):

* ``plain``: the pair's network alone (rules ``a->b:tcp/5201,5202``, intra deny);
* ``others``: the same, with ``--others`` more secnet networks in the host namespace,
  each on its own bridge with two ports (every bridge-family and inet base chain of
  theirs hooks this bridge's frames too: netfilter hooks are per namespace, not per
  bridge);
* ``scale``: the same as ``plain`` with ``--endpoints`` more ports on the pair's bridge
  (veths whose peers stay down, as in bench/scale.py) and ``--rules`` more rules.

With ``--base DIR`` each pair is made twice: with this checkout's backend and with the
one in DIR (e.g. ``git archive`` of the previous commit), names ``NAME@base``; ``--base``
repeats, and ``DIR=LABEL`` names the pairs ``NAME@LABEL``.

Measured in ``--rounds`` interleaved rounds (every other round backwards): iperf3 Gbit/s
and Gbit per CPU-second of iperf3's client and server (bench.dataplane.iperf_run), and a
sockperf request/response round trip (hot, 64 bytes, one CPU: per-packet costs show
there, where a 64 KiB GSO frame hides them). With ``--udp N`` instead: the CPU ns per
64-byte UDP datagram of N datagrams (bench/udpsend.c, sendmmsg; the sender's CPU time holds
the softirq work of the whole path: this kernel has no CONFIG_IRQ_TIME_ACCOUNTING), a
per-packet figure the machine's load moves far less than wall time. ``--kinds`` also takes
``others-bridge``/``others-inet`` (the other networks' bridge or inet tables only),
``ports`` (the ports on the bridge only) and ``members``/``rules`` (the ports, or the rules,
of ``scale`` alone). Printed: per pair the medians, and the median of the per-round ratios
to ``plain`` (to ``plain@LABEL`` for ``NAME@LABEL``), and with ``--base`` each pair's ratio to
the same pair of the first ``--base`` tree. Results: bench/results/2026-11-30-guard.md.
Subnets 10.219.0.0/16, only in the bench's own namespaces (deleted at the end).

Run: ``.venv/bin/python -m bench.nft_guard [--others 8] [--endpoints 1000] [--rules 10000]
[--rounds 10] [--secs 3] [--udp N] [--kinds plain,others,scale] [--base DIR[=LABEL] ...] [--tree DIR]
[--json FILE]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from .apply_script import apply_script
from .ebpf_datapath import container, iperf_run, ns_add, ns_del_all, one_cpu, rr, save_json, sh

def enforce(src: str, host: str, net_id: str, bridge: str, subnet: str, ports: list, rules: int) -> None:
    """secnet's nftables backend from the tree ``src`` on ``bridge`` in namespace ``host``; every
    port in the interface group ``int(net_id[1:8], 16)`` (what a guard on the group needs)."""
    code = apply_script(host, "a->b:tcp/5201, b->a:tcp/5201, a->b:tcp/5202, a->b:udp/5203, a->b:icmp",
                        f"[Port(f'e{{n}}', n, m, ip, identity=i) for n, m, ip, i in {ports!r}]",
                        f"NetworkSpec({net_id!r}, {bridge!r}, ({subnet!r},))", rules)
    group = int(net_id[1:8], 16)
    sh("ip", "-n", host, "-batch", "-", input="".join(f"link set {p[0]} group {group}\n" for p in ports))
    sh(sys.executable, "-c", code, cwd=src)


def bridge(host: str, name: str) -> None:
    sh("ip", "-n", host, "link", "add", name, "type", "bridge")
    sh("ip", "-n", host, "link", "set", name, "up")


def dead_ports(host: str, br: str, prefix: str, count: int, octet: int) -> list:
    """``count`` ports on ``br`` whose veth peers stay down (``ip -batch``: one process)."""
    lines, ports = [], []
    for i in range(count):
        name = f"{prefix}{i}"
        lines += [f"link add {name} type veth peer name {name}p",
                  f"link set {name} master {br} up"]
        ports.append((name, f"02:42:0a:db:{i // 256:02x}:{i % 256:02x}",
                      f"10.219.{octet + 4 + i // 250}.{i % 250 + 2}", 300 + i % 100))
    sh("ip", "-n", host, "-batch", "-", input="\n".join(lines) + "\n")
    return ports


def make_pair(src: str, tag: str, octet: int, kind: str, args, made: list) -> tuple:
    """(client ns, server ns, server address) of one pair of ``kind``."""
    host = f"sng-{tag}{octet}"
    ns_add(host, made)
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1",
       "net.bridge.bridge-nf-call-ip6tables=1")
    bridge(host, "br0")
    a, b = f"{host}-a", f"{host}-b"
    ip_a, ip_b = f"10.219.{octet}.2", f"10.219.{octet}.3"
    container(host, a, "sva", ip_a, f"02:42:0a:db:{octet:02x}:02", made)
    container(host, b, "svb", ip_b, f"02:42:0a:db:{octet:02x}:03", made)
    ports = [("sva", f"02:42:0a:db:{octet:02x}:02", ip_a, 256), ("svb", f"02:42:0a:db:{octet:02x}:03", ip_b, 257)]
    rules = 0
    if kind in ("scale", "ports", "members"):   # ports: on the bridge only; members: also in the tables
        dead = dead_ports(host, "br0", "sd", args.endpoints, octet)
        ports += dead if kind != "ports" else []
    if kind in ("scale", "rules"):
        rules = args.rules
    enforce(src, host, "bf" + f"{octet:02x}" + "0" * 60, "br0", f"10.219.{octet}.0/20", ports, rules)
    if kind.startswith("others"):   # others: both tables; others-bridge, others-inet: only that one
        for k in range(args.others):
            bridge(host, f"bro{k}")
            other = dead_ports(host, f"bro{k}", f"so{k}x", 2, 200)
            net_id = f"bf{octet:02x}{k + 1:04x}" + "0" * 56
            enforce(src, host, net_id, f"bro{k}", "10.219.200.0/22", other, 100)
            for family in {"others-bridge": ["inet"], "others-inet": ["bridge"]}.get(kind, []):
                sh("ip", "netns", "exec", host, "nft", "delete", "table", family, "secnet_" + net_id[:12])
    return a, b, ip_b


SINK = "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 5203)); time.sleep(600)"


def udp_cost(client: str, server: str, ip: str, packets: int, sender: str) -> float:
    """CPU ns per 64-byte UDP datagram sent from ``client`` to ``server``, the whole path
    included (``sender``: bench/udpsend.c built); the sink never reads (a full buffer drops)."""
    sink = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", SINK, ip])
    try:
        time.sleep(0.3)
        return float(sh("ip", "netns", "exec", client, *one_cpu(), sender, ip, str(packets)).stdout)
    finally:
        sink.kill()
        sink.wait()


def build_sender(where: str) -> str:
    out = os.path.join(where, "udpsend")
    sh("cc", "-O2", "-o", out, os.path.join(os.path.dirname(os.path.abspath(__file__)), "udpsend.c"))
    return out


def measure(pairs: dict, args) -> dict:
    if args.udp:
        return measure_udp(pairs, args)
    got = {n: {"gbps": [], "per_cpu_s": [], "rr_us": []} for n in pairs}
    names = list(pairs)
    for i in range(args.rounds):
        for name in names[::1 if i % 2 == 0 else -1]:
            gbps, per_cpu = iperf_run(*pairs[name], args.secs)
            got[name]["gbps"].append(gbps)
            got[name]["per_cpu_s"].append(per_cpu)
            got[name]["rr_us"].append(rr(*pairs[name], 2))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(
            f"{n} {v['gbps'][-1]:.2f} Gbit/s {v['rr_us'][-1]:.1f} us" for n, v in got.items()), flush=True)
    return got


def measure_udp(pairs: dict, args) -> dict:
    got = {n: {"udp_ns": []} for n in pairs}
    names = list(pairs)
    tmp = tempfile.mkdtemp(prefix="sng-")
    try:
        sender = build_sender(tmp)
        for i in range(args.rounds):
            for name in names[::1 if i % 2 == 0 else -1]:
                got[name]["udp_ns"].append(udp_cost(*pairs[name], args.udp, sender))
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(
                f"{n} {v['udp_ns'][-1]:.0f} ns" for n, v in got.items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return got


def _ref(got: dict, name: str) -> str:
    """``plain`` of ``name``'s tree: ``plain@LABEL`` for ``NAME@LABEL``."""
    return "plain" + (name[name.index("@"):] if "@" in name else "")


def _vs_base(got: dict, key: str) -> None:
    """Each pair against the same pair of the first ``--base`` tree: median, min and max of the
    per-round ratios (the pairs of one round see the same load)."""
    bases = [n for n in got if "@" in n]
    if not bases:
        return
    label = bases[0][bases[0].index("@"):]
    for name, m in got.items():
        kind = name.split("@")[0]
        if name.endswith(label) or kind + label not in got:
            continue
        ratios = [x / y for x, y in zip(m[key], got[kind + label][key]) if x and y]
        print(f"{name:13s} / {kind + label}: {key} median of per-round ratios {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} rounds)")


def show(got: dict) -> None:
    if "udp_ns" in next(iter(got.values())):
        return show_udp(got)
    med = statistics.median
    for name, m in got.items():
        ref = got[_ref(got, name)]
        ratio = {k: med([x / y for x, y in zip(m[k], ref[k]) if x and y]) for k in m}
        print(f"{name:13s} {med(m['gbps']):6.2f} Gbit/s ({ratio['gbps']:.3f}x)  "
              f"{med([v for v in m['per_cpu_s'] if v]):5.2f} Gbit/CPU-s ({ratio['per_cpu_s']:.3f}x)  "
              f"rr {med(m['rr_us']):5.1f} us ({ratio['rr_us']:.3f}x)")
    for key in ("gbps", "per_cpu_s", "rr_us"):
        _vs_base(got, key)


def show_udp(got: dict) -> None:
    med = statistics.median
    for name, m in got.items():
        ref = got[_ref(got, name)]["udp_ns"]
        ratio = med([x / y for x, y in zip(m["udp_ns"], ref)])
        diff = med([x - y for x, y in zip(m["udp_ns"], ref)])
        print(f"{name:13s} {med(m['udp_ns']):7.0f} CPU ns per datagram ({ratio:.3f}x, {diff:+.0f} ns; "
              f"median of the per-round ratios and differences)")
    _vs_base(got, "udp_ns")


def arguments():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--others", type=int, default=8)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--kinds", default="plain,others,scale")
    ap.add_argument("--base", action="append", default=[], metavar="DIR[=LABEL]",
                    help="another tree's backend, measured next to this checkout's (repeatable)")
    ap.add_argument("--tree", help="the tree measured instead of this checkout")
    ap.add_argument("--udp", type=int, default=0, metavar="N",
                    help="instead of iperf3/sockperf: CPU ns per datagram of N 64-byte UDP datagrams")
    ap.add_argument("--json")
    return ap.parse_args()


def main() -> int:
    args = arguments()
    tag, made, pairs = uuid.uuid4().hex[:4], [], {}
    here = args.tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [("", here)]
    for i, spec in enumerate(args.base):
        path, _, label = spec.partition("=")
        trees.append(("@" + (label or ("base" if i == 0 else f"base{i + 1}")), os.path.abspath(path)))
    try:
        octet = 0
        for suffix, src in trees:
            for kind in args.kinds.split(","):
                pairs[kind + suffix] = make_pair(src, tag, octet, kind, args, made)
                octet += 16
        got = measure(pairs, args)
        show(got)
        save_json(args.json, got)
    finally:
        ns_del_all(made)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
