"""Interleaved A/B of the CLI's one-rule edits between two trees (issue 12), each tree's
CLI against its own stand-in daemon.

Run as root: ``python -m bench.cliab OLD_TREE [--rounds R] [--rules N] [--endpoints M] [--flow]``.
OLD_TREE is a checkout of the base (``git archive BASE | tar -x -C DIR``, its ``.pyc``
compiled); this tree is the new one. Each tree gets a stand-in daemon of its own code
(``bench.cliserve`` as ``bench.cliedit --private`` starts it: one network of M endpoints
and N rules, a throwaway namespace, its own socket) and its CLI is run from its tree
by this venv's Python. Each round runs, for both trees in turn (which goes first
alternates), ``secnet status``, ``policy NET add RULE``, ``policy NET remove RULE`` and
the two with ``--json``, each a new process: wall time, and the CPU time of the process
(user + system, ``os.wait4``). Prints JSON: per tree and command the medians, per
command the median of the rounds' new/old ratios, per tree the median of the rounds'
edit/status ratios (wall and CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager

from . import cliedit
from .common import REPO
from .scale import ONE_RULE

PYTHON = os.path.join(REPO, ".venv", "bin", "python")
COMMANDS = {"status": ["status"], "add": ["policy", "{net}", "add", ONE_RULE],
            "remove": ["policy", "{net}", "remove", ONE_RULE],
            "add_json": ["--json", "policy", "{net}", "add", ONE_RULE],
            "remove_json": ["--json", "policy", "{net}", "remove", ONE_RULE]}


def _launcher(tmp: str, tree: str) -> str:
    """A script running ``tree``'s CLI (as the console entry point does)."""
    path = os.path.join(tmp, f"secnet-{abs(hash(tree))}")
    with open(path, "w") as f:
        f.write(f"import sys\nsys.path.insert(0, {tree!r})\nfrom plugin.cli.main import main\nsys.exit(main())\n")
    return path


@contextmanager
def _daemon(tree: str, rules: int, endpoints: int, flow: bool):
    """``tree``'s stand-in daemon: yields (socket, network id)."""
    with cliedit._private(rules, endpoints, flow, tree=tree) as (net_id, _ref):
        yield os.environ["SECNET_SOCKET"], net_id


def _run(script: str, args: list, sock: str) -> tuple:
    """(wall ms, CPU ms, exit status) of one CLI process."""
    env = dict(os.environ, SECNET_SOCKET=sock)
    t0 = time.perf_counter()
    pid = os.posix_spawn(PYTHON, [PYTHON, script] + args, env,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
    _pid, status, usage = os.wait4(pid, 0)
    return (time.perf_counter() - t0) * 1000, (usage.ru_utime + usage.ru_stime) * 1000, os.waitstatus_to_exitcode(status)


def _round(trees: list, order: list) -> dict:
    """{tree index: {command: (wall, cpu)}} of one round, trees in ``order``."""
    out = {}
    for i in order:
        script, sock, net = trees[i]
        times = {}
        for name, args in COMMANDS.items():
            wall, cpu, code = _run(script, [a.format(net=net) for a in args], sock)
            if code != 0:
                raise RuntimeError(f"tree {i}: secnet {' '.join(args)} exited {code}")
            times[name] = (wall, cpu)
        out[i] = times
    return out


def _summary(rounds: list) -> dict:
    med = statistics.median
    out = {"rounds": len(rounds)}
    for k, what in enumerate(("wall", "cpu")):
        for tree, label in ((0, "old"), (1, "new")):
            out[f"{label}_{what}_ms"] = {c: round(med(r[tree][c][k] for r in rounds), 2) for c in COMMANDS}
            out[f"{label}_{what}_per_status"] = {
                c: round(med(r[tree][c][k] / r[tree]["status"][k] for r in rounds), 3) for c in COMMANDS if c != "status"}
        out[f"new_per_old_{what}"] = {c: round(med(r[1][c][k] / r[0][c][k] for r in rounds), 3) for c in COMMANDS}
    return out


def run(old: str, rounds: int, rules: int, endpoints: int, flow: bool) -> dict:
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="snbench-ab-") as tmp:
        trees = []
        for tree in (os.path.abspath(old), REPO):
            sock, net = stack.enter_context(_daemon(tree, rules, endpoints, flow))
            trees.append((_launcher(tmp, tree), sock, net))
        _round(trees, [0, 1])   # warm: page cache, the daemons' first requests
        found = [_round(trees, [0, 1] if n % 2 == 0 else [1, 0]) for n in range(rounds)]
    return {"rules": rules, "endpoints": endpoints, "flow": flow, **_summary(found)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", help="a checkout of the base tree")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--flow", action="store_true", help="one established flow between two members")
    args = parser.parse_args()
    json.dump(run(args.old, args.rounds, args.rules, args.endpoints, args.flow), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
