"""Section 3, data plane: TCP throughput (iperf3), round-trip time (ping, every
10 ms: a cold path) and a hot request/response round trip (sockperf
ping-pong) from one container (or namespace) to another.

The host's iperf3, ping and sockperf run inside the containers' network namespaces
with nsenter (the test image has neither). Configurations:

* ``veth``: a bare veth pair between two plain namespaces (the ceiling);
* ``bridge``: Docker's bridge driver;
* ``secnet``: a secnet network without rules (both containers in the
  default segment);
* ``secnet-policy``: client and server in different segments, with the
  rules ``bcli->bsrv:tcp/5201 bcli->bsrv:icmp``;
* ``secnet-ebpf``: as ``secnet-policy`` on a network with
  ``-o secnet.backend=ebpf`` (the eBPF datapath);
* ``secnet-scale`` (made by ``scale.py``): the same flow on the network that
  holds 1,000 endpoints and 10,000 rules;
* ``veth-containers``: a bare veth pair between the ``secnet-ebpf`` pair's own
  two containers (10.217.1.0/24). Docker gives every container of a
  user-defined network a NAT table for its embedded DNS (127.0.0.11), so
  netfilter's conntrack runs in both containers on every packet, whatever
  the path between them; the plain namespaces of ``veth`` have none. This
  pair is the ceiling for the path alone, with the containers as they are.

Configurations are measured round-robin (repeat 1 of each, then repeat 2 of
each, ...) so that all of them see the same machine load.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass

from .common import (PREFIX, CmdError, Cleanup, create_network, docker, log, run_container,
                     sandbox_key, sh, stats)
from .ebpf_datapath import one_cpu

IPERF_PORT = 5201
# the interleaved A/B of make bench (run.py): Docker's bridge next to secnet (issue 12's
# "container->container throughput >= 1.0x Docker's bridge"), and the scale target's pairs
AB_PAIRS = ("bridge", "secnet", "secnet-policy", "secnet-scale")
PING_COUNT, PING_INTERVAL = 50, "0.01"


@dataclass
class Pair:
    name: str
    client_ns: str
    server_ns: str
    server_ip: str


class IperfServer:
    def __init__(self, pair: Pair):
        self.proc = subprocess.Popen(["nsenter", f"--net={pair.server_ns}", "iperf3", "-s", "-p",
                                      str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def iperf(pair: Pair, secs: int) -> float:
    """Gbit/s received by the server in one ``iperf3 -c -t secs`` run."""
    return iperf_run(pair, secs)[0]


def iperf_run(pair: Pair, secs: int) -> tuple:
    """(Gbit/s, Gbit per CPU-second) of one ``iperf3 -c -t secs`` run: the second divides by the
    CPU time of iperf3's client and server (their ``cpu_utilization_percent``, which counts the
    softirq work done in their context: most of a veth path's), a figure that the machine's
    other load moves far less than the Gbit/s (a run that gets less CPU moves fewer bytes, at
    about the same cost per byte)."""
    server = IperfServer(pair)
    try:
        for attempt in range(3):
            res = sh(["nsenter", f"--net={pair.client_ns}", "iperf3", "-c", pair.server_ip, "-p",
                      str(IPERF_PORT), "-t", str(secs), "-J"], check=False, timeout=secs + 30)
            try:
                data = json.loads(res.stdout)
            except ValueError:
                data = {"error": res.stderr.strip() or "no output"}
            if "error" not in data:
                gbps = data["end"]["sum_received"]["bits_per_second"] / 1e9
                cpu = data["end"].get("cpu_utilization_percent") or {}
                busy = (cpu.get("host_total", 0) + cpu.get("remote_total", 0)) / 100
                return gbps, (gbps / busy if busy else None)
            time.sleep(0.5)
        raise CmdError(f"iperf3 {pair.name}: {data['error']}")
    finally:
        server.stop()


_TIME = re.compile(r"time=([0-9.]+) ms")


def ping_rtt(pair: Pair) -> tuple:
    """(median RTT in ms of ``ping -c 50 -i 0.01``, replies received)."""
    res = sh(["nsenter", f"--net={pair.client_ns}", "ping", "-n", "-c", str(PING_COUNT), "-i",
              PING_INTERVAL, "-W", "1", pair.server_ip], check=False, timeout=60)
    rtts = [float(m) for m in _TIME.findall(res.stdout)]
    if not rtts:
        raise CmdError(f"ping {pair.name}: no reply ({res.stdout[-200:]} {res.stderr[-200:]})")
    return stats(rtts)["median"], len(rtts)


_P50 = re.compile(r"percentile 50\.000 =\s*([0-9.]+)")


def rr_rtt(pair: Pair, secs: int = 3):
    """Median round trip in µs of a hot TCP request/response (``sockperf
    ping-pong``, 64 bytes back to back, on the iperf3 port that the policies
    allow; ``--uc-reuseaddr``: iperf3 leaves it in TIME_WAIT; client and server
    on one CPU, as in ``bench.ebpf_datapath.rr``); None when sockperf reports none."""
    srv = subprocess.Popen(["nsenter", f"--net={pair.server_ns}", *one_cpu(), "sockperf", "server", "--tcp",
                            "--uc-reuseaddr", "-i", pair.server_ip, "-p", str(IPERF_PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        res = sh(["nsenter", f"--net={pair.client_ns}", *one_cpu(), "sockperf", "ping-pong", "--tcp", "-i",
                  pair.server_ip, "-p", str(IPERF_PORT), "-t", str(secs), "-m", "64"], check=False,
                 timeout=secs + 30)
        m = _P50.search(res.stdout + res.stderr)
        return 2 * float(m.group(1)) if m else None
    finally:
        srv.terminate()
        srv.wait(5)


def measure(pairs: list, repeats: int, secs: int) -> dict:
    """Round-robin iperf3 + ping + sockperf over ``pairs`` (every other round backwards: no pair
    always first or last); per pair the stats of the repeats (``rtt_ms``: ping's cold RTT;
    ``rr_us``: the hot request/response round trip)."""
    raw = {p.name: {"gbps": [], "rtt_ms": [], "ping_replies": [], "rr_us": []} for p in pairs}
    for r in range(repeats):
        for p in pairs[::1 if r % 2 == 0 else -1]:
            gbps = iperf(p, secs)
            rtt, replies = ping_rtt(p)
            rr = rr_rtt(p, min(secs, 3))
            raw[p.name]["gbps"].append(gbps)
            raw[p.name]["rtt_ms"].append(rtt)
            raw[p.name]["ping_replies"].append(replies)
            raw[p.name]["rr_us"].append(rr)
            log(f"  {p.name:<14} repeat {r + 1}/{repeats}: {gbps:6.2f} Gbit/s, rtt {rtt * 1000:5.0f} us, "
                f"request/response {rr} us")
    return {name: {"gbps": stats(v["gbps"]), "rtt_ms": stats(v["rtt_ms"]), "rr_us": stats(v["rr_us"]),
                   "raw": v} for name, v in raw.items()}


def ab(pairs: list, rounds: int, secs: int, ref: str = None) -> dict:
    """Throughput A/B of ``pairs``: ``rounds`` rounds of one iperf3 run per pair, every other
    round backwards (no pair always first); per pair the stats of its Gbit/s and of its
    per-round ratios to the reference ``ref`` (default: the first pair; ``ratio``: a ratio
    within a round is free of the machine's drift, which moves a 5 s run by +-30 % here).
    ``raw``: Gbit/s per round, in round order for every pair, so any two pairs' per-round
    ratios can be taken from it."""
    raw, eff = {p.name: [] for p in pairs}, {p.name: [] for p in pairs}
    for r in range(rounds):
        for p in pairs[::1 if r % 2 == 0 else -1]:
            gbps, per_cpu = iperf_run(p, secs)
            raw[p.name].append(gbps)
            eff[p.name].append(per_cpu)
        log(f"  A/B round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in raw.items()))
    base, ebase = raw[ref or pairs[0].name], eff[ref or pairs[0].name]
    out = {name: {"gbps": stats(v), "ratio": stats([a / b for a, b in zip(v, base) if b]), "raw": v,
                  "per_cpu_s": eff[name],   # Gbit per CPU-second of each round (iperf_run)
                  "per_cpu_ratio": stats([a / b for a, b in zip(eff[name], ebase) if a and b])}
           for name, v in raw.items()}
    out["reference"] = ref or pairs[0].name
    return out


# --- configurations -----------------------------------------------------------------

def veth_pair(cleanup: Cleanup) -> Pair:
    a, b = f"{PREFIX}-a", f"{PREFIX}-b"
    for ns in (a, b):
        sh(["ip", "netns", "add", ns])
        cleanup.push(f"netns {ns}", sh, ["ip", "netns", "del", ns])
    sh(["ip", "link", "add", f"{PREFIX}-va", "netns", a, "type", "veth", "peer", "name",
        f"{PREFIX}-vb", "netns", b])
    for ns, dev, addr in ((a, f"{PREFIX}-va", "10.217.0.1/24"), (b, f"{PREFIX}-vb", "10.217.0.2/24")):
        sh(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    return Pair("veth", f"/run/netns/{a}", f"/run/netns/{b}", "10.217.0.2")


def container_pair(cleanup: Cleanup, label: str, network: str, cli_ip: str, srv_ip: str,
                   cli_labels: dict = None, srv_labels: dict = None) -> Pair:
    keys = []
    for role, ip, labels in (("cli", cli_ip, cli_labels), ("srv", srv_ip, srv_labels)):
        name = f"{network}-{role}"
        run_container(name, network, ip, labels)
        cleanup.push(name, docker, "rm", "-f", name)
        keys.append(sandbox_key(name))
    return Pair(label, keys[0], keys[1], srv_ip)


def docker_pairs(cleanup: Cleanup) -> list:
    pairs = []
    for label, driver, subnet, base, opts, labels in (
            ("bridge", "bridge", "10.214.10.0/24", "10.214.10", (), ({}, {})),
            ("secnet", "secnet", "10.214.11.0/24", "10.214.11", (), ({}, {})),
            ("secnet-policy", "secnet", "10.214.12.0/24", "10.214.12",
             ("-o", f"secnet.allow=bcli->bsrv:tcp/{IPERF_PORT},bcli->bsrv:icmp"),
             ({"secnet.segment": "bcli"}, {"secnet.segment": "bsrv"})),
            ("secnet-ebpf", "secnet", "10.214.13.0/24", "10.214.13",
             ("-o", "secnet.backend=ebpf",
              "-o", f"secnet.allow=bcli->bsrv:tcp/{IPERF_PORT},bcli->bsrv:icmp"),
             ({"secnet.segment": "bcli"}, {"secnet.segment": "bsrv"}))):
        net = f"{PREFIX}-dp-{label}"
        create_network(net, driver, subnet, *opts)
        cleanup.push(f"network {net}", docker, "network", "rm", net)
        pairs.append(container_pair(cleanup, label, net, f"{base}.10", f"{base}.11", *labels))
    return pairs


def container_veth_pair(cleanup: Cleanup, pair: Pair) -> Pair:
    """A bare veth pair between ``pair``'s two containers (see the module docstring)."""
    cli, srv = f"{PREFIX}-cv", f"{PREFIX}-sv"
    sh(["nsenter", f"--net={pair.client_ns}", "ip", "link", "add", cli, "type", "veth", "peer", "name",
        srv, "netns", pair.server_ns])
    cleanup.push(f"veth {cli}", lambda: sh(["nsenter", f"--net={pair.client_ns}", "ip", "link", "del", cli],
                                            check=False))
    for ns, dev, addr in ((pair.client_ns, cli, "10.217.1.1/24"), (pair.server_ns, srv, "10.217.1.2/24")):
        sh(["nsenter", f"--net={ns}", "ip", "addr", "add", addr, "dev", dev])
        sh(["nsenter", f"--net={ns}", "ip", "link", "set", dev, "up"])
    return Pair("veth-containers", pair.client_ns, pair.server_ns, "10.217.1.2")


def check_reachable(pair: Pair) -> None:
    rtt, _ = ping_rtt(pair)
    log(f"  {pair.name}: reachable (rtt {rtt:.3f} ms)")


def main(argv=None) -> int:
    """``python -m bench.dataplane [--rounds 8] [--secs 5]``: the A/B of Docker's bridge,
    secnet and secnet with an allowing policy alone (what ``make bench`` runs with the scale
    network beside them), JSON on stdout. Needs root, the engine and the plugin."""
    import argparse
    import sys
    from .common import wait_for_plugin
    ap = argparse.ArgumentParser(prog="bench.dataplane", description=main.__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--secs", type=int, default=5)
    args = ap.parse_args(argv)
    wait_for_plugin(120)
    cleanup = Cleanup()
    try:
        pairs = {p.name: p for p in docker_pairs(cleanup)}
        for p in pairs.values():
            check_reachable(p)
        out = ab([pairs[n] for n in AB_PAIRS if n in pairs], args.rounds, args.secs, ref="secnet")
    finally:
        cleanup.run()
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
