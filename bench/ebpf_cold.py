"""The cost of one run of ``from_container``'s fast path, cold and hot, per build (root; ~1 min).

What a ping's RTT pays per hop (bench.ebpf_datapath's "ns/run, ping") measured alone: for each
build (``--object``, repeatable; default the checkout's ``secnet.o``), a bridge pair of
namespaces (``bench.ebpf_datapath.bridge_pair``) with the eBPF backend and that build, one ping
each way so the flow is tracked and the fast path knows both ends, then ``bpf/coldrun.c`` runs
the pinned ``from_container`` through BPF_PROG_TEST_RUN on the echo request (at ``sva``, the
client's host-side veth) and on the echo reply (at ``svb``): ``--runs`` cold runs each (the
caches evicted by writing ``--flush`` MiB first; the median) and 100,000 hot ones (the mean).
Beside them, on one more pair, ``bpf/redirect_floor.c`` (a program that only redirects) and an
empty program (``return TC_ACT_OK``): the cost any program pays, and the harness's own.
Every round measures every build, every other round backwards, all on one CPU (``taskset``);
the figures: per build and frame, the median over rounds, and the median of the per-round
ratios to the first build (a ratio within a round is free of the machine's drift).

Run: ``.venv/bin/python -m bench.ebpf_cold [--object A.o --object B.o] [--rounds 10]
[--runs 200] [--flush 48] [--json FILE]``. Subnets 10.218.{2,5,6,...}.0/24, bench-only
namespaces (deleted at the end), pins under /sys/fs/bpf/secnet-cold-<tag> (removed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import uuid

from .ebpf_datapath import NET_ID, bridge_pair, enforce, ns_del_all, save_json, sh

HERE = os.path.dirname(os.path.abspath(__file__))
EMPTY = '#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\nchar LICENSE[] SEC("license") = "GPL";\n' \
        'SEC("tc") int empty(struct __sk_buff *skb) { return 0; }\n'
ECHO_ID = 0x5e5e


def ifindex(host: str, dev: str) -> int:
    return json.loads(sh("ip", "-n", host, "-j", "link", "show", dev).stdout)[0]["ifindex"]


def echo_frame(octet: int, reply: bool) -> str:
    """Hex of an ICMP echo request a -> b (or its reply b -> a) of flow ``ECHO_ID`` on the pair
    ``octet`` (bench.ebpf_datapath's MACs and addresses); checksums zero (the fast path reads none)."""
    a, b = f"02420ada{octet:02x}02", f"02420ada{octet:02x}03"
    ia, ib = f"0ada{octet:02x}02", f"0ada{octet:02x}03"
    src, dst, isrc, idst = (b, a, ib, ia) if reply else (a, b, ia, ib)
    ip = "4500" + "0054" + "0000" + "4000" + "4001" + "0000" + isrc + idst
    icmp = ("00" if reply else "08") + "00" + "0000" + f"{ECHO_ID:04x}" + "0001" + "00" * 56
    return dst + src + "0800" + ip + icmp


def compile_tc(src_text: str, out: str, defines=()) -> None:
    with open(out + ".c", "w") as f:
        f.write(src_text)
    sh("clang", "-O2", "-g", "-target", "bpf", *defines, "-I/usr/include/x86_64-linux-gnu", "-c", out + ".c",
       "-o", out)


def setup(objects, tag, made, pin_root, work) -> dict:
    """name -> [(host ns, program pin, ifindex, frame hex) per frame]: one pair per build, one
    for the floor and the empty program."""
    cases = {}
    for i, obj in enumerate(objects):
        octet, root = 2 + i if i == 0 else 4 + i, f"{pin_root}/b{i}"
        host, a, _b, ip = bridge_pair(f"{tag}{i}", octet, made)
        enforce(host, octet, root, obj=obj)
        sh("ip", "netns", "exec", a, "ping", "-c", "2", "-i", "0.2", "-e", str(ECHO_ID), ip, check=False)
        pin = f"{root}/{NET_ID[:12]}/from_container"
        cases[f"{i}:{os.path.basename(obj)}"] = [
            (host, pin, ifindex(host, "sva"), echo_frame(octet, False)),
            (host, pin, ifindex(host, "svb"), echo_frame(octet, True))]
    host, _a, _b, _ip = bridge_pair(f"{tag}f", 3, made)
    peer = ifindex(host, "svb")
    with open(os.path.join(HERE, "bpf", "redirect_floor.c")) as f:
        compile_tc(f.read(), f"{work}/floor.o", (f"-DPEER={peer}",))
    compile_tc(EMPTY, f"{work}/empty.o")
    for name in ("floor", "empty"):
        sh("bpftool", "prog", "load", f"{work}/{name}.o", f"{pin_root}/{name}", "type", "classifier")
        cases[name] = [(host, f"{pin_root}/{name}", ifindex(host, "sva"), echo_frame(3, False))]
    return cases


def one(tool, case, runs, flush, sleep_us, cpu) -> tuple:
    """(cold median ns, hot ns, retval) of one program on one frame."""
    host, pin, idx, frame = case
    out = sh("nsenter", f"--net=/run/netns/{host}", "taskset", "-c", str(cpu), tool, pin, frame, str(idx), str(runs),
             str(flush), str(sleep_us)).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--object", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--flush", type=int, default=48, help="MiB written before each cold run")
    ap.add_argument("--sleep-us", type=int, default=10000,
                    help="idle this long before each cold run (ping -i 0.01's spacing); 0: --flush instead")
    ap.add_argument("--json")
    args = ap.parse_args()
    objects = args.object or [os.path.join(HERE, "..", "plugin", "enforce", "ebpf", "bpf", "secnet.o")]
    tag, made = uuid.uuid4().hex[:4], []
    pin_root, work = f"/sys/fs/bpf/secnet-cold-{tag}", tempfile.mkdtemp(prefix="snbench-cold-")
    cpu = max(os.sched_getaffinity(0))
    try:
        tool = f"{work}/coldrun"
        sh("clang", "-O2", "-o", tool, os.path.join(HERE, "bpf", "coldrun.c"))
        os.makedirs(pin_root)
        cases = setup(objects, tag, made, pin_root, work)
        got = {name: [[] for _ in frames] for name, frames in cases.items()}
        for r in range(args.rounds):
            for name in list(cases)[::1 if r % 2 == 0 else -1]:
                for j, case in enumerate(cases[name]):
                    got[name][j].append(one(tool, case, args.runs, args.flush, args.sleep_us, cpu))
        report(got)
        save_json(args.json, got)
    finally:
        ns_del_all(made)
        sh("rm", "-rf", pin_root, check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(got: dict) -> None:
    """Per build and frame: cold and hot ns (medians over rounds), retval, and the median of
    per-round ratios to the first build's same frame."""
    first = next(iter(got.values()))
    for name, frames in got.items():
        for j, rows in enumerate(frames):
            cold, hot = [r[0] for r in rows], [r[1] for r in rows]
            base = first[min(j, len(first) - 1)]
            rc = statistics.median(a[0] / b[0] for a, b in zip(rows, base))
            rh = statistics.median(a[1] / b[1] for a, b in zip(rows, base))
            print(f"{name:28s} {('request', 'reply')[j]:8s} cold {statistics.median(cold):6.0f} ns "
                  f"({min(cold)}-{max(cold)}, x{rc:.2f})  hot {statistics.median(hot):5.0f} ns (x{rh:.2f})  "
                  f"retval {rows[0][2]}")


if __name__ == "__main__":
    raise SystemExit(main())
