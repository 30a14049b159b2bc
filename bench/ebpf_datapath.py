"""eBPF datapath throughput and RTT, side by side in one run (root; ~5 min).

Pairs of namespaces, measured in ``--repeats`` interleaved rounds (every pair once per
round, every other round backwards; ``SPARSE`` ones every fifth round only) with
iperf3, ping and sockperf; a figure against the bare veth is the median (min-max) of the
per-round ratios (``round_ratios``: both pairs ran in that round, under the same load).
Every pair is measured with the same CPU pinning (``cpus``): iperf3's client on the first
CPU, its server on the last; ping on the first; sockperf's client and server on the last.

* ``veth``: a bare veth pair (the ceiling);
* ``bridge``: two namespaces on a Linux bridge with br_netfilter on, no policy;
* ``nftables``: the same bridge with secnet's nftables backend and the same
  policy;
* ``ebpf``: the same bridge with secnet's eBPF programs on both veths and an
  allowing policy (``a->b:tcp/5201``, ``b->a:tcp/5201``, ``a->b:tcp/5202``, intra deny): the
  fast path (bpf_redirect_peer) carries the judged flows;
* ``floor`` (with ``--floor``): the same bridge with ``bpf/redirect_floor.c`` on
  both host-side veths, a program that only hands every frame to the other
  veth's peer: what any program on the host side of a veth pays for the hop;
* ``veth+dockernat``, ``ebpf+dockernat`` (with ``--docker-nat``): the bare veth
  and the eBPF pair with Docker's embedded-DNS NAT table in both ends, as in
  every container of a user-defined Docker network: its nat hooks turn on
  netfilter's conntrack in those namespaces, on every packet, whatever the
  path between them (Docker's figures in ``bench.dataplane`` carry this).

Two latencies, both reported:

* ``rtt_us``: ping -i 0.01, the median of 50 -- a *cold* path: every echo runs
  after 10 ms of idle (caches and TLBs of this VM cold), so it weighs every
  extra cache line a path touches;
* ``rr_us``: a *hot* request/response: ``sockperf ping-pong --tcp`` (64-byte
  messages back to back for ``--rr-secs``), the median round trip (twice
  sockperf's one-way median latency), client and server on one CPU
  (``one_cpu``): on two CPUs each round trip waits for two cross-CPU wake-ups,
  which on this VM (an idle vCPU halts; waking it is an exit to the
  hypervisor) cost ~40 µs and vary by +-30 % -- the figure would measure the
  hypervisor, not the path (bench/results/2026-11-30-ebpf18.md).

Run: ``.venv/bin/python -m bench.ebpf_datapath [--secs 5] [--rr-secs 3] [--repeats 10] [--profile]
[--floor] [--docker-nat] [--no-throughput] [--object OLD.o] [--rules N]``
(``--object``: a fifth pair running another build of the
programs, e.g. the previous commit's, so before and after share one run).

``--profile`` also says where the eBPF pair's time goes (kernel.bpf_stats_enabled
on for the pair's runs only): the mean ns per run of ``from_container`` and
``to_container`` under iperf3 (warm caches), under ping's 10 ms spacing (cold:
what each hop of a ping's RTT pays) and under sockperf's request/response (hot,
64-byte packets: a few hundred ns when the fast path takes them, a few µs when
the full path runs), and how many of the packets the client
sent crossed the bridge instead of the fast path (the server's host-side veth
transmits only those).
Subnets 10.218.0.0/24 (bench-only namespaces, deleted at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid

from .apply_script import apply_script

NET_ID = "be0f" + "0" * 60


def sh(*argv, check=True, **kw):
    res = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


def ns_add(name, made):
    sh("ip", "netns", "add", name)
    made.append(name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def ns_del_all(made) -> None:
    """Delete the namespaces in ``made`` (what ``ns_add`` made), the last made first."""
    for name in reversed(made):
        sh("ip", "netns", "del", name, check=False)


def save_json(path, data) -> None:
    """Write ``data`` to ``path`` as indented JSON (nothing when ``path`` is empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1)


def container(host, ns, veth, ip, mac, made):
    ns_add(ns, made)
    sh("ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", host, "link", "set", veth, "master", "br0", "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")


def bridge_host(host, made):
    """Namespace ``host`` with bridge ``br0`` up and br_netfilter on (IPv4 and IPv6)."""
    ns_add(host, made)
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "link", "set", "br0", "up")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1",
       "net.bridge.bridge-nf-call-ip6tables=1")


def bridge_pair(tag, octet, made):
    host = f"snb-{tag}"
    bridge_host(host, made)
    a, b = f"{host}-a", f"{host}-b"
    container(host, a, "sva", f"10.218.{octet}.2", f"02:42:0a:da:{octet:02x}:02", made)
    container(host, b, "svb", f"10.218.{octet}.3", f"02:42:0a:da:{octet:02x}:03", made)
    return host, a, b, f"10.218.{octet}.3"


def veth_pair(tag, made):
    a, b = f"snv-{tag}-a", f"snv-{tag}-b"
    ns_add(a, made)
    ns_add(b, made)
    sh("ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0", "netns", b)
    sh("ip", "-n", a, "addr", "add", "10.218.9.2/24", "dev", "eth0")
    sh("ip", "-n", b, "addr", "add", "10.218.9.3/24", "dev", "eth0")
    for n in (a, b):
        sh("ip", "-n", n, "link", "set", "eth0", "up")
    return a, b, "10.218.9.3"


def enforce(host, octet, pin_root, extra_rules=0, backend="ebpf", obj=None):
    """Apply an allowing policy with the ``backend`` datapath (``ebpf`` or
    ``nftables``) inside namespace ``host`` (plus ``extra_rules`` rules
    between 100 other segments; ``obj``: another compiled object than the
    checkout's). The nftables backend's tables live in the namespace and go
    with it."""
    make = (f"EbpfBackend(pin_root='{pin_root}', obj_path={obj!r})" if backend == "ebpf"
            else "NftBackend()")
    imports = ("from plugin.enforce.ebpf.backend import EbpfBackend\n"
               "from plugin.enforce.nftables import NftBackend")
    pair = (f"[Port('ea', 'sva', '02:42:0a:da:{octet:02x}:02', '10.218.{octet}.2', identity=256), "
            f"Port('eb', 'svb', '02:42:0a:da:{octet:02x}:03', '10.218.{octet}.3', identity=257)]")
    code = apply_script(host, "a->b:tcp/5201, b->a:tcp/5201, a->b:tcp/5202, a->b:icmp", pair,
                        f"NetworkSpec({NET_ID!r}, 'br0', ('10.218.{octet}.0/24',))", extra_rules,
                        backend=make, imports=imports, close=True)
    sh(".venv/bin/python", "-c", code)


# What Docker 20.10 writes into every container of a user-defined network for its
# embedded DNS (iptables-nft; the ports are random per container): the nat hooks alone
# make netfilter's conntrack run on every packet in that namespace, whatever the path.
DOCKER_DNS_NAT = """table ip nat {
 chain DOCKER_OUTPUT {
  ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:40001
  ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:40002
 }
 chain OUTPUT {
  type nat hook output priority -100; ip daddr 127.0.0.11 jump DOCKER_OUTPUT
 }
 chain DOCKER_POSTROUTING {
  ip saddr 127.0.0.11 tcp sport 40001 snat to :53
  ip saddr 127.0.0.11 udp sport 40002 snat to :53
 }
 chain POSTROUTING {
  type nat hook postrouting priority 100; ip daddr 127.0.0.11 jump DOCKER_POSTROUTING
 }
}
"""


def docker_nat(*namespaces):
    """Docker's embedded-DNS NAT table in each of ``namespaces`` (see DOCKER_DNS_NAT)."""
    for ns in namespaces:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=DOCKER_DNS_NAT, text=True,
                       check=True, capture_output=True)


def iperf(client, server, ip, secs):
    return iperf_run(client, server, ip, secs)[0]


def cpus() -> tuple:
    """(first, last) CPU this process may use: iperf3's client runs on the first, its server on
    the last; ping on the first; sockperf's client and server both on the last (``one_cpu``)."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


def pinned(cpu: int) -> list:
    """``taskset`` argv prefix for ``cpu``."""
    return ["taskset", "-c", str(cpu)]


def iperf_run(client, server, ip, secs):
    """(Gbit/s, Gbit per CPU-second of iperf3's client and server; see bench.dataplane.iperf_run).
    The same pinning on every pair: the client on the first CPU, the server on the last
    (``cpus``); the sender's softirq work (veth's backlog, a tc program, bpf_redirect_peer)
    runs on the client's CPU, the receiver's ACKs on the server's."""
    first, last = cpus()
    srv = subprocess.Popen(["ip", "netns", "exec", server, *pinned(last), "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(server, 5201)
        out = json.loads(sh("ip", "netns", "exec", client, *pinned(first), "iperf3", "-J", "-c", ip, "-p", "5201",
                            "-t", str(secs)).stdout)["end"]
        gbps, cpu = out["sum_received"]["bits_per_second"] / 1e9, out.get("cpu_utilization_percent") or {}
        busy = (cpu.get("host_total", 0) + cpu.get("remote_total", 0)) / 100
        return gbps, (gbps / busy if busy else None)
    finally:
        srv.wait(timeout=10)


def rtt(client, ip):
    """Median RTT in µs of ``ping -c 50 -i 0.01`` from ``client`` (on the first CPU) to ``ip`` (the
    median, not ping's mean: one echo preempted by another job on this shared VM moves a mean of 50
    by several µs; as bench.dataplane.ping_rtt and bench.ebpf_rtt_ab)."""
    out = sh("ip", "netns", "exec", client, *pinned(cpus()[0]), "ping", "-c", "50", "-i", "0.01", ip).stdout
    rtts = [float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", out)]
    if len(rtts) < 25:
        raise RuntimeError(f"ping {client} -> {ip}: {len(rtts)} of 50 answered")
    return statistics.median(rtts)


def wait_listening(ns, port, timeout=5.0):
    """Until a TCP socket listens on ``port`` in namespace ``ns``."""
    end = time.monotonic() + timeout
    while f":{port} " not in sh("ip", "netns", "exec", ns, "ss", "-Hltn").stdout:
        if time.monotonic() > end:
            raise RuntimeError(f"nothing listens on {ns} port {port}")
        time.sleep(0.05)


def one_cpu() -> list:
    """``taskset`` argv prefix: the last CPU this process may use (sockperf's client and server
    both on it; see ``rr_us`` above)."""
    return ["taskset", "-c", str(max(os.sched_getaffinity(0)))]


def rr(client, server, ip, secs):
    """Median round trip in µs of a TCP request/response of 64 bytes, back to back, client and
    server on one CPU (port 5202: iperf3's server leaves 5201 in TIME_WAIT, which sockperf
    cannot bind)."""
    srv = subprocess.Popen(["ip", "netns", "exec", server, *one_cpu(), "sockperf", "server", "--tcp", "-i", ip,
                            "-p", "5202"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(server, 5202)
        res = sh("ip", "netns", "exec", client, *one_cpu(), "sockperf", "ping-pong", "--tcp", "-i", ip, "-p", "5202",
                 "-t", str(secs), "-m", "64")
        out = res.stdout + res.stderr   # sockperf reports on either, by version
        m = re.search(r"percentile 50\.000 =\s*([\d.]+)", out)
        if not m:
            raise RuntimeError(f"sockperf {client} -> {ip}: no latency in {out[-300:]!r}")
        return 2 * float(m.group(1))
    finally:
        srv.terminate()
        srv.wait(timeout=10)


def floor(host, octet, made_dir):
    """Attach ``bpf/redirect_floor.c`` to both host-side veths of the bridge
    pair in ``host`` (compiled per direction into ``made_dir``)."""
    idx = {dev: json.loads(sh("ip", "-n", host, "-j", "link", "show", dev).stdout)[0]["ifindex"]
           for dev in ("sva", "svb")}
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "redirect_floor.c")
    for dev, peer in (("sva", "svb"), ("svb", "sva")):
        obj = os.path.join(made_dir, f"floor-{octet}-{dev}.o")
        sh("clang", "-O2", "-g", "-target", "bpf", f"-DPEER={idx[peer]}", "-I/usr/include/x86_64-linux-gnu",
           "-c", src, "-o", obj)
        sh("ip", "netns", "exec", host, "tc", "qdisc", "add", "dev", dev, "clsact")
        sh("ip", "netns", "exec", host, "tc", "filter", "add", "dev", dev, "ingress", "bpf", "da", "obj", obj,
           "sec", "tc")


def prog_stats(pin_root: str) -> dict:
    """program name -> (run_time_ns, run_cnt) of the bench network's pinned programs."""
    out = {}
    for name in ("from_container", "to_container"):
        info = json.loads(sh("bpftool", "-j", "prog", "show", "pinned",
                             f"{pin_root}/{NET_ID[:12]}/{name}").stdout)
        out[name] = (info.get("run_time_ns", 0), info.get("run_cnt", 0))
    return out


def link_packets(host: str, dev: str) -> tuple:
    """(rx, tx) packets of ``dev`` in namespace ``host``."""
    info = json.loads(sh("ip", "-n", host, "-j", "-s", "link", "show", dev).stdout)[0]["stats64"]
    return info["rx"]["packets"], info["tx"]["packets"]


def profile(host, client, server, ip, pin_root, secs) -> dict:
    """ns per program run under iperf3 and under ping, and the share of the
    client's packets that crossed the bridge (see the module docstring)."""
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        was = f.read().strip()
    sh("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
    out = {}
    try:
        for what, run in (("iperf3", lambda: iperf(client, server, ip, secs)), ("ping", lambda: rtt(client, ip)),
                          ("sockperf", lambda: rr(client, server, ip, 3))):
            before, links0 = prog_stats(pin_root), (link_packets(host, "sva"), link_packets(host, "svb"))
            run()
            after, links1 = prog_stats(pin_root), (link_packets(host, "sva"), link_packets(host, "svb"))
            for name, (t, n) in after.items():
                runs = n - before[name][1]
                out[f"{name} ns/run, {what}"] = round((t - before[name][0]) / runs) if runs else None
            sent = links1[0][0] - links0[0][0]
            out[f"bridged share of sent packets, {what}"] = round((links1[1][1] - links0[1][1]) / max(sent, 1), 4)
    finally:
        sh("sysctl", "-qw", f"kernel.bpf_stats_enabled={was}")
    return out


def arguments():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10, help="rounds (see rounds())")
    ap.add_argument("--rr-secs", type=int, default=3, help="seconds of each sockperf run")
    ap.add_argument("--rules", type=int, default=0, help="also an eBPF pair with this many more rules")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--profile", action="store_true", help="where the eBPF pair's time goes (see above)")
    ap.add_argument("--object", action="append", default=[],
                    help="also an eBPF pair running this compiled secnet.o (e.g. an older commit's), "
                    "measured in the same rounds: before/after side by side (repeatable)")
    ap.add_argument("--no-throughput", action="store_true",
                    help="latencies only (no iperf3): more rounds in the same time for RTT comparisons")
    ap.add_argument("--docker-nat", action="store_true",
                    help="also the bare veth and eBPF pairs with Docker's embedded-DNS NAT table in both ends")
    ap.add_argument("--floor", action="store_true",
                    help="also a pair with a program that only redirects (bpf/redirect_floor.c)")
    return ap.parse_args()


def make_pairs(args, tag, made, pin_root, floor_dir):
    """name -> (client ns, server ns, server address); and the eBPF pairs to profile."""
    va, vb, vip = veth_pair(tag, made)
    _h1, ba, bb, bip = bridge_pair(tag + "x", 1, made)
    h2, ea, eb, eip = bridge_pair(tag + "y", 2, made)
    enforce(h2, 2, pin_root)
    h4, na, nb, nip = bridge_pair(tag + "n", 4, made)
    enforce(h4, 4, pin_root, backend="nftables")
    pairs = {"veth": (va, vb, vip), "bridge": (ba, bb, bip), "nftables": (na, nb, nip),
             "ebpf": (ea, eb, eip)}
    profiled = {"ebpf_profile": (h2, ea, eb, eip, pin_root)}
    for i, obj in enumerate(args.object):
        name, root = f"ebpf@{os.path.basename(obj)}", f"{pin_root}o{i}"
        h5, oa, ob, oip = bridge_pair(f"{tag}o{i}", 5 + i, made)
        enforce(h5, 5 + i, root, obj=obj)
        pairs[name] = (oa, ob, oip)
        profiled[f"{name}_profile"] = (h5, oa, ob, oip, root)
    if args.floor:
        h6, fa, fb, fip = bridge_pair(tag + "f", 8, made)
        floor(h6, 8, floor_dir)
        pairs["floor"] = (fa, fb, fip)
    if args.docker_nat:   # the two ends as Docker makes them (conntrack on), bare and eBPF
        na2, nb2, nip2 = veth_pair(tag + "d", made)
        docker_nat(na2, nb2)
        h7, da, db, dip = bridge_pair(tag + "d", 7, made)
        enforce(h7, 7, pin_root + "d")
        docker_nat(da, db)
        pairs.update({"veth+dockernat": (na2, nb2, nip2), "ebpf+dockernat": (da, db, dip)})
    if args.rules:
        h3, ra, rb, rip = bridge_pair(tag + "z", 3, made)
        enforce(h3, 3, pin_root + "r", args.rules)
        pairs[f"ebpf+{args.rules}"] = (ra, rb, rip)
        profiled[f"ebpf+{args.rules}_profile"] = (h3, ra, rb, rip, pin_root + "r")
    return pairs, profiled


# not in issue 13's ratios: measured in every fifth round only (the section's time: sockperf alone
# costs ~3.3 s a run, 2 s of it a fixed sleep after its warm-up)
SPARSE = ("bridge", "nftables", "veth+dockernat", "ebpf+dockernat")


def rounds(pairs, args) -> dict:
    """Every pair once per round (``SPARSE`` ones every fifth round), every other round
    backwards (no pair always first or last): per pair the figures and ``round``, the round of
    each, so that two pairs' figures of one round can be divided (``round_ratios``)."""
    got = {k: {"gbps": [], "per_cpu_s": [], "rtt_us": [], "rr_us": [], "round": []} for k in pairs}
    for i in range(args.repeats):
        names = [k for k in pairs if i % 5 == 0 or k not in SPARSE]
        for name in names[::1 if i % 2 == 0 else -1]:
            c, s, ip = pairs[name]
            if not args.no_throughput:   # and Gbit per CPU-second of iperf3 (iperf_run)
                gbps, per_cpu = iperf_run(c, s, ip, args.secs)
                got[name]["gbps"].append(gbps)
                got[name]["per_cpu_s"].append(per_cpu)
            got[name]["rtt_us"].append(rtt(c, ip))
            got[name]["rr_us"].append(rr(c, s, ip, args.rr_secs))
            got[name]["round"].append(i)
        print(f"round {i + 1}/{args.repeats}: " + ", ".join(
            f"{k} {v['gbps'][-1] if v['gbps'] else 0:.2f}/{v['rtt_us'][-1]:.0f}/{v['rr_us'][-1]:.1f}"
            for k, v in got.items() if v["round"] and v["round"][-1] == i), flush=True)
    return got


def round_ratios(a: dict, b: dict, key: str) -> list:
    """``a[key] / b[key]`` of the rounds both pairs ran (``rounds``' figures; without ``round``:
    position by position)."""
    ra, rb = a.get("round") or range(len(a[key])), b.get("round") or range(len(b[key]))
    bs = dict(zip(rb, b[key]))
    return [x / bs[r] for r, x in zip(ra, a[key]) if x is not None and bs.get(r)]


def show(got) -> None:
    """Medians per pair and the median (min-max) of the per-round ratios to the bare veth."""
    med = lambda v: statistics.median(v) if v else float("nan")   # noqa: E731

    def x(name, key):
        v = sorted(round_ratios(got[name], got["veth"], key))
        return f"{med(v):.2f}x ({v[0]:.2f}-{v[-1]:.2f})" if v else "-"
    for name, m in got.items():
        g, r, q = (med(m[k]) for k in ("gbps", "rtt_us", "rr_us"))
        print(f"{name:15s} {g:6.2f} Gbit/s {x(name, 'gbps')}  ping {r:5.1f} us {x(name, 'rtt_us')}  "
              f"rr {q:5.1f} us {x(name, 'rr_us')}")


def main() -> int:
    args = arguments()
    tag = uuid.uuid4().hex[:4]
    made, pin_root = [], f"/sys/fs/bpf/secnet-bench-{tag}"
    floor_dir = tempfile.mkdtemp(prefix="snbench-floor-")
    try:
        pairs, profiled = make_pairs(args, tag, made, pin_root, floor_dir)
        got = rounds(pairs, args)
        show(got)
        for what, where in profiled.items() if args.profile else ():
            got[what] = profile(*where, args.secs)
            for key, value in got[what].items():
                print(f"  {what[:-8]} {key}: {value}")
        save_json(args.json, got)
    finally:
        ns_del_all(made)
        sh("rm", "-rf", pin_root, pin_root + "r", pin_root + "d", *(f"{pin_root}o{i}" for i in range(len(args.object))),
           check=False)
        shutil.rmtree(floor_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
