"""The CLI process's own CPU time, two trees interleaved (issue 12; no root, no daemon, no Docker).

Run: ``.venv/bin/python -m bench.cli_cpu --base DIR [--rounds R] [--rules N] [--json FILE]``.
DIR is a checkout of the base (``git archive REV | tar -x -C DIR``, its ``.pyc`` compiled with
``python -m compileall``); this tree is the new one. A stand-in daemon in this process (a
thread on a unix socket of its own) answers every request at once with a fixed small
answer, so that only the CLI is measured. Each round runs, for both trees, in a random
order, each a new process of this venv's Python: ``python -c pass``; the same with N rule
arguments (the interpreter's start and its copy of ``argv``); ``import plugin.cli.main``
with N arguments; ``secnet policy NET set`` of N rules (``bench.scale.sweep_rules`` and the
flow's two); the same set with 500 rules an argument, comma-separated (the contract's rule
separators: ``set $(cat FILE)`` of a file of such lines; one argument holds at most 128 KiB,
Linux's ``MAX_ARG_STRLEN``, ~6,000 of these rules); ``secnet policy NET add RULE``;
``secnet status``. Figure: the process's user + system time (``os.wait4``), ms; per case
each tree's median and min, and the median (min, max) of the per-round ratios new / base.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading

from .ebpf_datapath import save_json
from .scale import FLOW_RULES, ONE_RULE, sweep_rules

NET = "0123456789ab" * 5 + "0123"
_ANSWERS = {b"/secnet/status": {"healthy": True, "networks": [], "reconcile_repairs": 0}}


def _serve(sock: socket.socket) -> None:
    """Answer each request on ``sock`` (read to its ``Content-Length``) with a small JSON body."""
    while True:
        conn, _ = sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(262144)
            path = head.split(b" ")[1]
            out = json.dumps(_ANSWERS.get(path, {"network": NET, "count": 10002})).encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(out), out))


def _cases(tree: str, rules: list) -> dict:
    cli = f"import sys; sys.path.insert(0, {tree!r}); from plugin.cli.main import main; sys.exit(main())"
    return {"pass": ["-c", "pass"], "pass + N arguments": ["-c", "pass"] + rules,
            "import the CLI + N arguments": ["-c", f"import sys; sys.path.insert(0, {tree!r}); import plugin.cli.main"]
            + rules,
            "policy set of N": ["-c", cli, "policy", NET[:12], "set"] + rules,
            "policy set of N, 500 an argument": ["-c", cli, "policy", NET[:12], "set"]
            + [",".join(rules[i:i + 500]) for i in range(0, len(rules), 500)],
            "policy add 1": ["-c", cli, "policy", NET[:12], "add", ONE_RULE],
            "status": ["-c", cli, "status"]}


def _cpu_ms(args: list, env: dict) -> float:
    proc = subprocess.Popen([sys.executable] + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"{args[:2]}... exited with {status}")
    return (usage.ru_utime + usage.ru_stime) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--json")
    args = ap.parse_args()
    trees = {"new": os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "base": os.path.abspath(args.base)}
    rules = sweep_rules(args.rules, 1) + FLOW_RULES
    rows: dict = {}
    with tempfile.TemporaryDirectory(prefix="snclicpu-") as tmp:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.join(tmp, "d.sock"))
        sock.listen(16)
        threading.Thread(target=_serve, args=(sock,), daemon=True).start()
        env = dict(os.environ, SECNET_SOCKET=os.path.join(tmp, "d.sock"), DOCKER_HOST=f"unix://{tmp}/none.sock")
        for _ in range(args.rounds):
            runs = [(name, case, cmd) for name, tree in trees.items() for case, cmd in _cases(tree, rules).items()]
            random.shuffle(runs)
            for name, case, cmd in runs:
                rows.setdefault(case, {}).setdefault(name, []).append(_cpu_ms(cmd, env))
    med = statistics.median
    summary = {}
    for case, got in rows.items():
        ratios = [a / b for a, b in zip(got["new"], got["base"])]
        summary[case] = {"new": round(med(got["new"]), 1), "base": round(med(got["base"]), 1),
                         "new_min": round(min(got["new"]), 1), "base_min": round(min(got["base"]), 1),
                         "ratio_median": round(med(ratios), 3), "ratio_min": round(min(ratios), 3),
                         "ratio_max": round(max(ratios), 3)}
        print(f"{case:30s} " + "  ".join(f"{k} {v}" for k, v in summary[case].items()))
    save_json(args.json, {"rules": args.rules, "rounds": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
