"""``bench.ebpf_docker --diag``: what could differ between the Docker and namespace eBPF pairs.

Per pair and end: the container-side device's and the host-side veth's offloads (``ethtool -k``),
link details (MTU, GSO/GRO sizes, queues, qdisc, XDP), qdiscs and tc filters, RPS/XPS masks; the
client namespaces' ``net.*`` sysctls and nft rulesets, compared with ``ns-ebpf``'s; and during one
sockperf run of each eBPF pair, its programs' runs and ns per run and the frames the host-side
veths transmitted (those crossed the bridge instead of the fast path).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

from .common import docker, sh
from .dataplane import Pair, rr_rtt

LINK_KEYS = ("mtu", "qdisc", "txqlen", "gso_max_size", "gso_max_segs", "gro_max_size", "tso_max_size",
             "num_tx_queues", "num_rx_queues", "xdp", "promiscuity", "allmulti")


def _in(ns, argv, check=False):
    return sh((["nsenter", f"--net={ns}"] if ns else []) + list(argv), check=check)


def device(ns, dev: str) -> dict:
    """Settings of ``dev`` in namespace path ``ns`` (None: the root namespace)."""
    link = json.loads(_in(ns, ["ip", "-d", "-j", "link", "show", dev], True).stdout)[0]
    out = {k: link.get(k) for k in LINK_KEYS}
    out["link_index"] = link.get("link_index")
    feats = _in(ns, ["ethtool", "-k", dev]).stdout.splitlines()[1:]
    out["features"] = {ln.split(":")[0].strip(): ln.split(":")[1].split()[0] for ln in feats if ":" in ln}
    out["tc"] = _in(ns, ["tc", "qdisc", "show", "dev", dev]).stdout.strip() + " | " + " ".join(
        ln.strip() for d in ("ingress", "egress")
        for ln in _in(ns, ["tc", "filter", "show", "dev", dev, d]).stdout.splitlines())
    out["rps/xps"] = _in(ns, ["sh", "-c", f"cat /sys/class/net/{dev}/queues/rx-0/rps_cpus "
                              f"/sys/class/net/{dev}/queues/tx-0/xps_cpus 2>/dev/null | tr '\\n' ' '"]).stdout
    return out


def host_side(pair: Pair, host_ns, end: str) -> tuple:
    """(namespace, name) of the host side of ``end``'s eth0 (its peer)."""
    ns = pair.client_ns if end == "client" else pair.server_ns
    index = device(ns, "eth0")["link_index"]
    links = json.loads(_in(host_ns, ["ip", "-j", "link", "show"], True).stdout)
    return host_ns, next(x["ifname"] for x in links if x["ifindex"] == index)


def sysctls(ns) -> dict:
    lines = _in(ns, ["sysctl", "-a", "-r", r"^net\.(core|ipv4|ipv6|netfilter|unix)"]).stdout.splitlines()
    return dict(ln.split(" = ", 1) for ln in lines if " = " in ln)


def differences(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            and "eth0" not in k and not k.startswith(("net.ipv4.conf.e20", "net.ipv6.conf.e20"))}


def prog_runs(pin_dir: str, host_ns, devs: list, pair: Pair) -> dict:
    """Runs and ns per run of the pinned programs and the host-side veths' tx frames during one
    sockperf run of ``pair``."""
    def snap():
        progs = {}
        for name in ("from_container", "to_container"):
            info = json.loads(sh(["bpftool", "-j", "prog", "show", "pinned", f"{pin_dir}/{name}"]).stdout)
            progs[name] = (info.get("run_time_ns", 0), info.get("run_cnt", 0))
        tx = {d: json.loads(_in(host_ns, ["ip", "-j", "-s", "link", "show", d], True).stdout)[0]["stats64"]
              for d in devs}
        return progs, {d: (s["tx"]["packets"], s["rx"]["packets"]) for d, s in tx.items()}
    sh(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"])
    try:
        p0, t0 = snap()
        rr = rr_rtt(pair, 3)
        p1, t1 = snap()
    finally:
        sh(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"])
    out = {"rr_us": rr}
    for name in p0:
        runs = p1[name][1] - p0[name][1]
        out[name] = {"runs": runs, "ns/run": round((p1[name][0] - p0[name][0]) / runs) if runs else None}
    out["host veth tx, rx frames"] = {d: (t1[d][0] - t0[d][0], t1[d][1] - t0[d][1]) for d in devs}
    return out


def collect(pairs: dict, hosts: dict, pin_root: str) -> dict:
    """Everything above, as one dict (also printed)."""
    from .ebpf_datapath import NET_ID
    host_ns = {"docker-ebpf": None, "docker-floor": None}
    host_ns.update({k: f"/run/netns/{v}" for k, v in hosts.items()})
    out = {"devices": {}}
    for name, pair in pairs.items():
        for end, ns in (("client", pair.client_ns), ("server", pair.server_ns)):
            dev = ("e20c" if end == "client" else "e20s") if name in ("veth-containers", "veth-root-ends") else "eth0"
            out["devices"][f"{name} {end}"] = device(ns, dev)
            if name in host_ns:
                hns, hdev = host_side(pair, host_ns[name], end)
                out["devices"][f"{name} {end} host-side {hdev}"] = device(hns, hdev)
    pins = {"ns-ebpf": f"{pin_root}/{NET_ID[:12]}"}
    if "docker-ebpf" in pairs:
        nid = docker("network", "inspect", "-f", "{{.Id}}", "e20bench-ebpf")
        pins["docker-ebpf"] = f"/sys/fs/bpf/secnet/{nid[:12]}"
    for name, pin_dir in pins.items():
        pair = pairs[name]
        devs = [host_side(pair, host_ns[name], e)[1] for e in ("client", "server")]
        out[f"programs {name}"] = prog_runs(pin_dir, host_ns[name], devs, pair)
    ref = pairs["ns-ebpf+dockernat"].client_ns
    if "docker-ebpf" not in pairs:
        print(json.dumps(out, indent=1))
        return out
    out["sysctl differences docker-ebpf client vs ns-ebpf+dockernat client"] = differences(
        sysctls(pairs["docker-ebpf"].client_ns), sysctls(ref))
    out["nft docker-ebpf client"] = _in(pairs["docker-ebpf"].client_ns, ["nft", "list", "ruleset"]).stdout
    out["nft ns-ebpf+dockernat client"] = _in(ref, ["nft", "list", "ruleset"]).stdout
    out["iptables-legacy docker-ebpf client"] = _in(pairs["docker-ebpf"].client_ns, ["iptables-legacy-save"]).stdout
    out["root conntrack count"] = open("/proc/sys/net/netfilter/nf_conntrack_count").read().strip() \
        if os.path.exists("/proc/sys/net/netfilter/nf_conntrack_count") else None
    print(json.dumps(out, indent=1))
    return out


def perf_profile(pair: Pair, out_dir: str, secs: int = 3, top: int = 45) -> dict:
    """Kernel and user symbols of sockperf's CPU during one run of ``pair`` (``perf record -e
    cpu-clock -C CPU -g``; the share of each symbol among the samples of the sockperf processes and
    of ksoftirqd on that CPU; no children)."""
    from .ebpf_datapath import one_cpu
    cpu = one_cpu()[-1]
    data = os.path.join(out_dir, f"perf-{pair.name}.data")
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-C", cpu, "-g", "-o", data],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rr = rr_rtt(pair, secs)
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(30)
    rep = sh(["perf", "report", "-i", data, "--no-children", "--comm", f"sockperf,ksoftirqd/{cpu}", "--sort", "sym",
              "--stdio", "-g", "none", "--percentage", "relative", "--percent-limit", "0.4"], check=False).stdout
    lines = [ln.strip() for ln in rep.splitlines() if ln.strip() and not ln.startswith("#")][:top]
    total = sh(["perf", "report", "-i", data, "--no-children", "--sort", "comm", "--stdio", "-g", "none"],
               check=False).stdout
    comms = [ln.strip() for ln in total.splitlines() if ln.strip() and not ln.startswith("#")][:8]
    return {"rr_us": rr, "symbols": lines, "comms": comms}
