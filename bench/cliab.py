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
(user + system, ``os.wait4``). ``--sets``: each round also ``policy NET set`` of N rules
(``bench.scale.sweep_rules`` and the flow's two, as ``make bench``'s sweep sends them: one
argument a rule; the variant changes every round, so that each set replaces every rule but the
flow's two). ``--block B``: then, per round and tree, B status
requests, B one-rule adds and their B removes sent from this process (the daemons'
answers: wall per request, and the daemon's CPU over each block from /proc, per request).
Prints JSON: per tree and command the medians, per command the median of the rounds'
new/old ratios, per tree the median of the rounds' edit/status ratios (wall and CPU);
the daemons' under ``daemon``.
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

from plugin.cli.client import exchange

from . import cliedit
from .common import CLK_TCK, REPO
from .scale import FLOW_RULES, ONE_RULE, sweep_rules

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


def _round(trees: list, order: list, sets: list = None) -> dict:
    """{tree index: {command: (wall, cpu)}} of one round, trees in ``order``; ``sets``: the
    rules of a ``set`` command too."""
    out = {}
    commands = dict(COMMANDS, set=["policy", "{net}", "set", *sets]) if sets else COMMANDS
    for i in order:
        script, sock, net, _pids = trees[i]
        times = {}
        for name, args in commands.items():
            wall, cpu, code = _run(script, [a.format(net=net) for a in args], sock)
            if code != 0:
                raise RuntimeError(f"tree {i}: secnet {' '.join(args[:4])} exited {code}")
            times[name] = (wall, cpu)
        out[i] = times
    return out


def _summary(rounds: list, commands) -> dict:
    med = statistics.median
    out = {"rounds": len(rounds)}
    for k, what in enumerate(("wall", "cpu")):
        for tree, label in ((0, "old"), (1, "new")):
            out[f"{label}_{what}_ms"] = {c: round(med(r[tree][c][k] for r in rounds), 2) for c in commands}
            out[f"{label}_{what}_per_status"] = {
                c: round(med(r[tree][c][k] / r[tree]["status"][k] for r in rounds), 3) for c in commands if c != "status"}
        out[f"new_per_old_{what}"] = {c: round(med(r[1][c][k] / r[0][c][k] for r in rounds), 3) for c in commands}
    return out


def _daemon_pids(sock: str) -> list:
    """The stand-in daemon's processes serving ``sock`` (gunicorn master and worker:
    those whose command line runs bench.cliserve on it)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"bench.cliserve" in args and sock.encode() in args:
            pids.append(pid)
    return pids


def _cpu(pids: list) -> float:
    """CPU ms (user + system, all threads) so far of ``pids``."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total * 1000 / CLK_TCK


def _answers(trees: list, order: list, block: int) -> dict:
    """{tree index: {kind: (wall ms, daemon CPU ms) per request}}: on each tree's socket,
    from this process, ``block`` status requests, then ``block`` one-rule adds of
    different rules, then their removes (no rule list back, as the CLI asks)."""
    out = {}
    for i in order:
        _script, sock, net, pids = trees[i]
        rules = [f"s1->s2:tcp/{7 + n}" for n in range(block)]
        out[i] = {}
        for kind, path, bodies in (
                ("status", "/secnet/status", [{}] * block),
                ("add", "/secnet/policy", [{"network": net, "action": "add", "rules": [r], "list": False}
                                           for r in rules]),
                ("remove", "/secnet/policy", [{"network": net, "action": "remove", "rules": [r], "list": False}
                                              for r in rules])):
            cpu, walls = _cpu(pids), []
            for body in bodies:
                t0 = time.perf_counter()
                _ok(exchange(sock, "POST", path, json.dumps(body).encode()))
                walls.append((time.perf_counter() - t0) * 1000)
            out[i][kind] = (statistics.median(walls), (_cpu(pids) - cpu) / block)
    return out


def _ok(answer: tuple) -> None:
    status, body = answer
    if status != 200 or b'"Err"' in body[:200]:
        raise RuntimeError(f"the stand-in daemon answered {status}: {body[:200]!r}")


def run(old: str, rounds: int, rules: int, endpoints: int, flow: bool, block: int = 0, sets: bool = False) -> dict:
    """The CLI's A/B (``rounds`` rounds); with ``block``, the daemons' answers too
    (``rounds`` rounds of ``block`` requests of each kind per tree)."""
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="snbench-ab-") as tmp:
        trees = []
        for tree in (os.path.abspath(old), REPO):
            sock, net = stack.enter_context(_daemon(tree, rules, endpoints, flow))
            trees.append((_launcher(tmp, tree), sock, net, _daemon_pids(sock)))
        variant = (lambda n: sweep_rules(rules, 1 + n % 2) + FLOW_RULES) if sets else (lambda n: None)
        _round(trees, [0, 1], variant(1))   # warm: page cache, the daemons' first requests
        found = [_round(trees, [0, 1] if n % 2 == 0 else [1, 0], variant(n)) for n in range(rounds)]
        answers = [_answers(trees, [0, 1] if n % 2 == 0 else [1, 0], block) for n in range(rounds)] if block else []
    out = {"rules": rules, "endpoints": endpoints, "flow": flow, **_summary(found, list(found[0][0]))}
    if answers:
        out["daemon"] = dict(_summary(answers, ("status", "add", "remove")), block=block)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", help="a checkout of the base tree")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--flow", action="store_true", help="one established flow between two members")
    parser.add_argument("--sets", action="store_true", help="also policy NET set of N rules, each round")
    parser.add_argument("--block", type=int, default=0,
                        help="also the daemons' answers: this many requests of each kind per tree and round")
    args = parser.parse_args()
    json.dump(run(args.old, args.rounds, args.rules, args.endpoints, args.flow, args.block, args.sets), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
