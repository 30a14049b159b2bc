"""The eBPF pair in Docker against the same in namespaces, in one run (issue 13, ebpf20).

Why is the eBPF backend ~1.0x a bare veth in namespaces (``bench.ebpf_datapath``) but
1.16-1.30x in Docker (``bench.dataplane``)? Pairs, measured round-robin (every other round
backwards), sockperf's hot request/response (client and server on one CPU) and ping's cold RTT,
as those two benches measure them:

* ``veth``: a bare veth pair between two plain namespaces;
* ``veth-containers``: a bare veth pair between the ``docker-ebpf`` pair's two containers;
* ``docker-ebpf``: two containers on a secnet network with ``-o secnet.backend=ebpf`` and
  the bench's allowing policy (``bcli->bsrv:tcp/5201,bcli->bsrv:icmp``);
* ``docker-floor``: two containers on a user-defined Docker bridge network with
  ``bench/bpf/redirect_floor.c`` on both host-side veths (root namespace): any program on
  the host side of a Docker container's veth;
* ``ns-ebpf``, ``ns-ebpf+dockernat``, ``ns-veth+dockernat``: ``bench.ebpf_datapath``'s
  eBPF pair (host side in a namespace of its own) with and without Docker's
  embedded-DNS NAT table in both ends, and the bare veth with it;
* ``root-ebpf+dockernat``, ``veth-root-ends``: Docker's layout without dockerd -- the eBPF
  pair with its bridge and host-side veths in the root namespace and the NAT table in both
  ends, and a bare veth between those two ends (as ``veth-containers``).

``--diag``: the settings that could differ (ethtool -k, ip -d link, qdiscs, the
containers' sysctls and nft rulesets, per pair) and, for ``docker-ebpf`` and ``ns-ebpf``, the
programs' runs and ns per run and the host-side veths' transmitted frames during one
sockperf run (a frame the host side transmits crossed the bridge, not the fast path).

Run (needs dockerd and the secnet plugin: under the e2e lock):
``.venv/bin/python -m bench.ebpf_docker [--rounds 6] [--secs 3] [--diag] [--json F]``.
Subnets 10.219.40.0/24-10.219.42.0/24 (Docker), 10.218.41-44.0/24 and 10.218.9.0/24
(namespaces); everything is named ``e20bench``/``snbe20``/``snb-``/``snv-`` and removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import uuid

from . import ebpf_datapath as edp
from .common import Cleanup, create_network, docker, log, sh
from .dataplane import Pair, container_pair, ping_rtt, rr_rtt

TAG = "e20bench"   # not snbench-: bench.common.remove_leftovers of a concurrent make bench removes those
ALLOW = "bcli->bsrv:tcp/5201,bcli->bsrv:icmp"
FLOOR_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "redirect_floor.c")


def nsx(ns: str, *argv, check=True):
    """``argv`` run in the network namespace at path ``ns``."""
    return sh(["nsenter", f"--net={ns}", *argv], check=check)


def peer_ifindex(ns: str, dev: str = "eth0") -> int:
    """Ifindex (in the root namespace) of the host side of ``dev``'s veth in ``ns``."""
    return json.loads(nsx(ns, "ip", "-j", "link", "show", dev).stdout)[0]["link_index"]


def docker_pairs(cleanup: Cleanup) -> dict:
    """``docker-ebpf``, ``veth-containers`` and ``docker-floor``."""
    out = {}
    net = f"{TAG}-ebpf"
    create_network(net, "secnet", "10.219.40.0/24", "-o", "secnet.backend=ebpf", "-o", f"secnet.allow={ALLOW}")
    cleanup.push(f"network {net}", docker, "network", "rm", net)
    p = container_pair(cleanup, "docker-ebpf", net, "10.219.40.10", "10.219.40.11",
                       {"secnet.segment": "bcli"}, {"secnet.segment": "bsrv"})
    out["docker-ebpf"] = p
    nsx(p.client_ns, "ip", "link", "add", "e20c", "type", "veth", "peer", "name", "e20s", "netns", p.server_ns)
    for ns, dev, addr in ((p.client_ns, "e20c", "10.219.41.1/24"), (p.server_ns, "e20s", "10.219.41.2/24")):
        nsx(ns, "ip", "addr", "add", addr, "dev", dev)
        nsx(ns, "ip", "link", "set", dev, "up")
    out["veth-containers"] = Pair("veth-containers", p.client_ns, p.server_ns, "10.219.41.2")
    net = f"{TAG}-br"
    create_network(net, "bridge", "10.219.42.0/24")
    cleanup.push(f"network {net}", docker, "network", "rm", net)
    f = container_pair(cleanup, "docker-floor", net, "10.219.42.10", "10.219.42.11")
    out["docker-floor"] = f
    return out


def attach_floor(pair: Pair, made_dir: str) -> None:
    """``redirect_floor.c`` on both host-side veths of ``pair`` (root namespace)."""
    ping_rtt(pair)   # neighbours learned through the bridge first
    ends = {"c": peer_ifindex(pair.client_ns), "s": peer_ifindex(pair.server_ns)}
    names = {i["ifindex"]: i["ifname"] for i in json.loads(sh(["ip", "-j", "link", "show"]).stdout)}
    for me, other in (("c", "s"), ("s", "c")):
        obj = os.path.join(made_dir, f"floor-{me}.o")
        sh(["clang", "-O2", "-g", "-target", "bpf", f"-DPEER={ends[other]}", "-I/usr/include/x86_64-linux-gnu",
            "-c", FLOOR_C, "-o", obj])
        dev = names[ends[me]]
        sh(["tc", "qdisc", "add", "dev", dev, "clsact"])
        sh(["tc", "filter", "add", "dev", dev, "ingress", "bpf", "da", "obj", obj, "sec", "tc"])


def ns_pairs(tag: str, made: list, pin_root: str) -> dict:
    """``veth``, ``ns-ebpf``, ``ns-ebpf+dockernat``, ``ns-veth+dockernat`` (bench.ebpf_datapath's)."""
    run = lambda name: f"/run/netns/{name}"   # noqa: E731
    va, vb, vip = edp.veth_pair(tag, made)
    h1, ea, eb, eip = edp.bridge_pair(tag + "y", 41, made)
    edp.enforce(h1, 41, pin_root)
    h2, da, db, dip = edp.bridge_pair(tag + "d", 42, made)
    edp.enforce(h2, 42, pin_root + "d")
    edp.docker_nat(da, db)
    na, nb, nip = edp.veth_pair(tag + "n", made)
    edp.docker_nat(na, nb)
    return {"veth": Pair("veth", run(va), run(vb), vip),
            "ns-ebpf": Pair("ns-ebpf", run(ea), run(eb), eip),
            "ns-ebpf+dockernat": Pair("ns-ebpf+dockernat", run(da), run(db), dip),
            "ns-veth+dockernat": Pair("ns-veth+dockernat", run(na), run(nb), nip)}, {"ns-ebpf": h1}


ROOT_NET = "be20" + "0" * 60


def root_pair(tag: str, made: list, pin_root: str, cleanup: Cleanup) -> Pair:
    """``root-ebpf+dockernat``: ``ns-ebpf+dockernat`` with its bridge and host-side veths in the
    root namespace, as Docker's (10.218.43.0/24; the backend's NAT table is not made: no ``nat``),
    and ``veth-root-ends``, a bare veth between its two ends (10.218.44.0/24): Docker's pair and
    ``veth-containers`` without dockerd."""
    br, a, b = f"snbe20{tag}", f"snbe20{tag}a", f"snbe20{tag}b"
    sh(["ip", "link", "add", br, "type", "bridge"])
    cleanup.push(f"bridge {br}", sh, ["ip", "link", "del", br])
    sh(["ip", "link", "set", br, "up"])
    ends = []
    for dev, last in ((a, 2), (b, 3)):
        ns = f"snb-{tag}r-{dev[-1]}"
        edp.ns_add(ns, made)
        sh(["ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns])
        cleanup.push(f"veth {dev}", sh, ["ip", "link", "del", dev], False)
        sh(["ip", "link", "set", dev, "master", br, "up"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "address", f"02:42:0a:da:2b:0{last}"])
        sh(["ip", "-n", ns, "addr", "add", f"10.218.43.{last}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        ends.append(ns)
    code = f"""
from plugin.enforce.backend import NetworkSpec, Port
from plugin.enforce.ebpf.backend import EbpfBackend
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules
pm = compile_policy_map(NetworkOptions(rules=parse_rules('a->b:tcp/5201, b->a:tcp/5201, a->b:tcp/5202, a->b:icmp'),
                                       intra='deny'), {{'a': 256, 'b': 257}})
ports = [Port('ea', '{a}', '02:42:0a:da:2b:02', '10.218.43.2', identity=256),
         Port('eb', '{b}', '02:42:0a:da:2b:03', '10.218.43.3', identity=257)]
EbpfBackend(pin_root='{pin_root}r').apply_network(NetworkSpec('{ROOT_NET}', '{br}', ('10.218.43.0/24',)), pm, ports)
"""
    sh([".venv/bin/python", "-c", code])
    cleanup.push("root pins", sh, ["rm", "-rf", pin_root + "r"], False)
    edp.docker_nat(*ends)
    sh(["ip", "-n", ends[0], "link", "add", "e20c", "type", "veth", "peer", "name", "e20s", "netns", ends[1]])
    for ns, dev, last in ((ends[0], "e20c", 1), (ends[1], "e20s", 2)):
        sh(["ip", "-n", ns, "addr", "add", f"10.218.44.{last}/24", "dev", dev])
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
    run = (f"/run/netns/{ends[0]}", f"/run/netns/{ends[1]}")
    return {"root-ebpf+dockernat": Pair("root-ebpf+dockernat", *run, "10.218.43.3"),
            "veth-root-ends": Pair("veth-root-ends", *run, "10.218.44.2")}


def rounds(pairs: dict, n: int, secs: int, ping: bool = True) -> dict:
    got = {k: {"rr_us": [], "rtt_us": []} for k in pairs}
    for r in range(n):
        for name, p in list(pairs.items())[::1 if r % 2 == 0 else -1]:
            got[name]["rr_us"].append(rr_rtt(p, secs) or rr_rtt(p, secs) or float("nan"))
            got[name]["rtt_us"].append(ping_rtt(p)[0] * 1000 if ping else 1.0)
        log(f"round {r + 1}/{n}: " + ", ".join(f"{k} {v['rr_us'][-1]:.1f}/{v['rtt_us'][-1]:.0f}"
                                               for k, v in got.items()))
    return got


def show(got: dict) -> dict:
    """Medians and the medians of per-round ratios to each reference pair present."""
    med = statistics.median
    table = {}
    refs = [r for r in ("veth", "veth-containers", "ns-veth+dockernat", "veth-root-ends") if r in got]
    for name, m in got.items():
        row = {k: med([v for v in m[k] if v == v]) for k in ("rr_us", "rtt_us")}
        for ref in refs:
            for k in ("rr_us", "rtt_us"):
                row[f"{k}/{ref}"] = med([a / b for a, b in zip(m[k], got[ref][k]) if a == a and b == b])
        table[name] = row
        print(f"{name:20s} rr {row['rr_us']:5.1f} us (" + ", ".join(f"{row['rr_us/' + r]:.2f}x {r}" for r in refs)
              + f")  ping {row['rtt_us']:5.1f} us (" + ", ".join(f"{row['rtt_us/' + r]:.2f}x" for r in refs) + ")")
    return table


def arguments():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--diag", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--no-ping", action="store_true", help="request/response only (shorter rounds)")
    ap.add_argument("--perf", action="store_true", help="perf profiles of sockperf's CPU per pair (see diag)")
    ap.add_argument("--no-docker", action="store_true", help="the namespace pairs only (no dockerd needed)")
    return ap.parse_args()


def extras(args, pairs: dict, hosts: dict, pin_root: str, made_dir: str) -> dict:
    """``--diag`` and ``--perf`` (a diag failure is logged: the figures still count)."""
    from . import ebpf_docker_diag as diag
    out = {"diag": {}}
    if args.diag:
        try:
            out["diag"] = diag.collect(pairs, hosts, pin_root)
        except Exception as exc:   # noqa: BLE001
            log(f"diag: {exc!r}")
    for name in pairs if args.perf else ():
        out.setdefault("perf", {})[name] = diag.perf_profile(pairs[name], made_dir)
        print(name, json.dumps(out["perf"][name], indent=1), flush=True)
    return out


def main() -> int:
    args = arguments()
    tag, made, cleanup = uuid.uuid4().hex[:4], [], Cleanup()
    pin_root = f"/sys/fs/bpf/secnet-bench-{tag}"
    made_dir = tempfile.mkdtemp(prefix="snbench-e20-")
    try:
        pairs = {} if args.no_docker else docker_pairs(cleanup)
        if pairs:
            attach_floor(pairs["docker-floor"], made_dir)
        more, hosts = ns_pairs(tag, made, pin_root)
        pairs.update(more)
        pairs.update(root_pair(tag, made, pin_root, cleanup))
        for p in pairs.values():
            ping_rtt(p)   # neighbours and flows known before the first round
        out = extras(args, pairs, hosts, pin_root, made_dir)
        out["raw"] = rounds(pairs, args.rounds, args.secs, not args.no_ping)
        out["table"] = show(out["raw"])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        cleanup.run()
        for name in reversed(made):
            sh(["ip", "netns", "del", name], check=False)
        sh(["rm", "-rf", pin_root, pin_root + "d", made_dir], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
