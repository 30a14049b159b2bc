"""The eBPF backend's ``policy set`` alone: N rules replaced by N others, in a namespace.

Run as root: ``python -m bench.ebpf_set [--rules N] [--sets S] [--rounds R] [--base REV]
[--profile FILE]``. Each round is one process that makes a scratch network namespace,
an ``EbpfBackend`` (pins under ``/sys/fs/bpf/secnet-bench-*``, removed at the end) and
a network with N rules (bench.nft_datapath's ``s<i>->s<j>:tcp/<port>`` over 100
segments, no ports), then times S calls of ``apply_policy`` as the reconciler makes
them (the map after the delta passed), each replacing the N rules in force by N
others (every port moved by one), then S times one rule added and removed with the N in
force. Stage stamps (ms, summed per set) of the functions the set goes through, where the
tree has them. Python's cyclic collector is paused during each timed call, as the daemon
pauses it for a policy edit (``--gc-on``: not). ``--pause S``: S seconds (untimed) before
each set, as a user leaves between commands (work the backend leaves to a thread after
a call, such as the eBPF backend's levelling of the version not in force, then happens
there rather than in the next timed call). ``set cpu``: the calling thread's CPU time.

``--base REV``: the same rounds against ``git archive REV`` (its ``plugin`` and
``segmentation`` by PYTHONPATH, this checkout's compiled datapath object for both),
interleaved (A B, B A, ...); the figures are the median and min of every set of each, and
the median of the per-round ratios (this tree's median set over the base's, same round).
``--profile FILE``: one round of this tree under cProfile, stats to FILE.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from .common import stats

#: (module, attribute path) timed per set when the tree has them
STAGES = (
    ("plugin.enforce.ebpf.backend", "EbpfBackend._swap"),
    ("plugin.enforce.ebpf.backend", "_delta_changes"),
    ("plugin.enforce.ebpf.backend", "group_index"),
    ("plugin.enforce.ebpf.maps", "policy_content"),
    ("plugin.enforce.ebpf.maps", "content_diff"),
    ("plugin.enforce.ebpf.libbpf", "update_many"),      # the base tree's
    ("plugin.enforce.ebpf.libbpf", "delete_many"),
    ("plugin.enforce.ebpf.backend", "_touched"),
    ("plugin.enforce.ebpf.backend", "_regroup"),
    ("plugin.enforce.ebpf.maps", "versioned_keys"),
    ("plugin.enforce.ebpf.libbpf", "update_batch"),
    ("plugin.enforce.ebpf.libbpf", "delete_batch"),
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECT = os.path.join(ROOT, "plugin", "enforce", "ebpf", "bpf", "secnet.o")


def _stamp(stamps: dict, owner, name: str, label: str) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stamps[label] = stamps.get(label, 0.0) + (time.perf_counter() - t0) * 1000
    setattr(owner, name, timed)


def install(stamps: dict) -> None:
    """Wrap every stage of STAGES this tree has (and the module-level names bound to it)."""
    for module, path in STAGES:
        owner = importlib.import_module(module)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        if hasattr(owner, name):
            _stamp(stamps, owner, name, path.split(".")[-1])


@contextlib.contextmanager
def _collector(on: bool):
    """Python's cyclic collector paused for the block unless ``on``: the daemon makes its
    policy edits so (plugin.daemon.api.collection_deferred)."""
    enabled = gc.isenabled()
    if not on:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _sets(n: int, sets: int, obj: str, stages: bool, gc_on: bool = False, pause: float = 0.0) -> dict:
    """In the current (scratch) namespace: S timed sets of n rules; {"set": [ms], stage: [ms]}."""
    from plugin.enforce.backend import NetworkSpec          # noqa: PLC0415 (the tree under test)
    from plugin.enforce.ebpf.backend import EbpfBackend     # noqa: PLC0415
    from segmentation.identities import MemoryAllocator     # noqa: PLC0415

    from .nft_datapath import SEGMENTS, policy, sweep_rules  # noqa: PLC0415
    net = NetworkSpec("be0c5" + "0" * 59, "snbench0", ("10.238.0.0/16",), ("10.238.0.1",))
    ids = MemoryAllocator().allocate(net.id, [f"s{i}" for i in range(SEGMENTS)] + ["default"])
    maps = [policy(sweep_rules(n, variant), ids) for variant in (0, 1)]
    stamps: dict = {}
    if stages:
        install(stamps)
    backend = EbpfBackend(pin_root=f"/sys/fs/bpf/secnet-bench-{uuid.uuid4().hex[:8]}", obj_path=obj)
    out: dict = {"set": []}
    try:
        backend.apply_network(net, maps[0], [])
        for i in range(sets):
            old, new = maps[i % 2], maps[1 - i % 2]
            time.sleep(pause)
            delta = old.delta(new)
            stamps.clear()
            gc.collect()
            with _collector(gc_on):
                t0, c0 = time.perf_counter(), time.thread_time()
                backend.apply_policy(net, delta, policy=new)
                out["set"].append((time.perf_counter() - t0) * 1000)
                out.setdefault("set cpu", []).append((time.thread_time() - c0) * 1000)
            for label, ms in stamps.items():
                out.setdefault(label, []).append(ms)
        current = maps[sets % 2]
        one = policy(sweep_rules(n, sets % 2) + " s1->s2:tcp/7", ids)
        for _ in range(sets):      # one rule added and removed with n in force
            for label, (old, new) in (("one rule add", (current, one)), ("one rule remove", (one, current))):
                delta = old.delta(new)
                with _collector(gc_on):
                    t0 = time.perf_counter()
                    backend.apply_policy(net, delta, policy=new)
                    out.setdefault(label, []).append((time.perf_counter() - t0) * 1000)
    finally:
        backend.remove_network(net.id)
        backend.close()
        shutil.rmtree(backend.root, ignore_errors=True)
    return out


def child(args) -> None:
    from plugin.kernel import netns   # noqa: PLC0415
    import plugin                     # noqa: PLC0415
    result = netns.run_in_new(lambda: _sets(args.rules, args.sets, args.obj, not args.profile, args.gc_on,
                                                  args.pause),
                              timeout=600)
    result["tree"] = os.path.dirname(os.path.dirname(plugin.__file__))
    print(json.dumps(result))


def run_round(tree: str, args) -> dict:
    cmd = [sys.executable, "-m", "bench.ebpf_set", "--child", "--rules", str(args.rules),
           "--sets", str(args.sets), "--obj", args.obj, "--pause", str(args.pause)] + \
        (["--gc-on"] if args.gc_on else [])
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True, timeout=900)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if os.path.realpath(result["tree"]) != os.path.realpath(tree):
        raise SystemExit(f"round ran {result['tree']}, not {tree}")
    return result


def base_tree(rev: str) -> str:
    """``git archive rev`` in a temporary directory, with this bench in it."""
    path = tempfile.mkdtemp(prefix="ebpf-set-base-")
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
    shutil.copy(os.path.abspath(__file__), os.path.join(path, "bench", "ebpf_set.py"))
    return path


def summary(results: list) -> dict:
    """label -> [median, min, n] (ms) over every set of ``results``."""
    labels = {label for r in results for label in r if label != "tree"}
    out = {}
    for label in sorted(labels):
        s = stats([v for r in results for v in r.get(label, ())])
        out[label] = [round(s["median"], 1), round(s["min"], 1), s["n"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--base", help="a git revision to compare with, interleaved")
    parser.add_argument("--profile", help="cProfile one round of this tree into FILE")
    parser.add_argument("--obj", default=OBJECT)
    parser.add_argument("--gc-on", action="store_true",
                        help="leave Python's collector on during the calls (the daemon pauses it)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between sets (untimed): what a user leaves between two commands")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.profile:
        import cProfile   # noqa: PLC0415
        from plugin.kernel import netns   # noqa: PLC0415
        prof = cProfile.Profile()
        netns.run_in_new(lambda: prof.runcall(_sets, args.rules, args.sets, args.obj, False), timeout=600)
        prof.dump_stats(args.profile)
        return None
    trees = {"this": ROOT}
    if args.base:
        trees["base"] = base_tree(args.base)
    results: dict = {name: [] for name in trees}
    try:
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                results[name].append(run_round(trees[name], args))
                print(f"round {r} {name}: {[round(v) for v in results[name][-1]['set']]}", file=sys.stderr)
    finally:
        if "base" in trees:
            shutil.rmtree(trees["base"], ignore_errors=True)
    out = {"rules": args.rules, **{name: summary(rs) for name, rs in results.items()}}
    if "base" in results:   # each round's median set of this tree over the base's in the same round
        ratios = [stats(a["set"])["median"] / stats(b["set"])["median"]
                  for a, b in zip(results["this"], results["base"])]
        out["set this/base per round"] = [round(stats(ratios)["median"], 3), [round(r, 2) for r in ratios]]
        cpu = [stats(a["set cpu"])["median"] / stats(b["set cpu"])["median"]
               for a, b in zip(results["this"], results["base"]) if a.get("set cpu") and b.get("set cpu")]
        if cpu:
            out["set cpu this/base per round"] = [round(stats(cpu)["median"], 3), [round(r, 2) for r in cpu]]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
