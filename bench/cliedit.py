"""Where a one-rule edit's CLI round trip goes, at N rules (issue 12: <= 1.2x an empty `secnet status`).

Run as root with the plugin on its socket (``make bench``'s conditions, under the e2e lock):
``.venv/bin/python -m bench.cliedit [--rules N] [--repeats R]``. It creates the secnet
network ``snbench-cliedit`` (10.216.16.0/24, no containers), sets N rules (bench/scale.py's
sweep), then times, interleaved R times:

* as the user runs them (a new process each): ``secnet status``, ``secnet policy NET add
  RULE``, ``secnet policy NET remove RULE`` (plain and ``--json``), and ``python -c pass``
  and ``python -c 'import plugin.cli.main'`` (the interpreter and the CLI's imports);
* inside this process, the CLI's pieces: resolving the network's name through the engine,
  the daemon's answer to ``status`` and to one rule ``add``/``remove`` (HTTP included).

Prints one JSON object of medians (ms), min and max; removes the network at the end.

``--private [--endpoints M]``: no Docker network and not the shared daemon, but a
stand-in daemon (``bench.cliserve``: the daemon's app over a real state, reconciler,
nftables backend and conntrack index, served by gunicorn as ``secnet-plugin`` is) in
a throwaway namespace, on a socket of its own, holding one network of M endpoints and
N rules; the CLI names it by id (the engine does not know it). Status there does less
than the real daemon's (no engine or DNS figures): compare edits with each other.
``--scale [--endpoints M]``: on the shared daemon, the scale section's network as ``make bench``
times its edits (``snbench-scale``: two containers, M endpoints through the plugin API, N rules
and the flow's two; bench/scale.py), instead of ``snbench-cliedit`` without endpoints.
``--sets``: also ``policy NET set`` of N rules (as the CLI and in process; each set
replaces every rule) and ``python -c pass`` with N arguments; with ``--private`` the
stand-in daemon times the stages of each request (``bench.stages``) and the output gets
their medians under ``stages``.
``--flow`` (with ``--private``): the network also holds one established flow between two
members, as the scale section's network holds its iperf flow (a rule removal judges it).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

from plugin.cli import client

from .common import PREFIX, REPO, SECNET_CLI, create_network, docker, log, now, sh, stats
from .scale import ONE_RULE, sweep_rules
from .stages import summary

NET = f"{PREFIX}-cliedit"
SUBNET = "10.216.16.0/24"
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
_SERIAL = itertools.count()   # stand-in daemons of this process (namespace names)


def _process(args: list) -> float:
    t0 = now()
    sh(args)
    return (now() - t0) * 1000


def _inside(fn, *args) -> float:
    t0 = now()
    fn(*args)
    return (now() - t0) * 1000


def _set_cases(net_id: str, ref: str, rules: int) -> dict:
    """``policy set`` of ``rules`` rules as the CLI and in process, and the interpreter
    with as many arguments; the sets alternate two rule lists that differ in every port
    (the world holds variant 0: every set changes every rule, each round ends on variant 0)."""
    lists = [sweep_rules(rules, variant) for variant in (1, 0)]
    turn = [0]

    def next_list() -> list:
        turn[0] += 1
        return lists[(turn[0] - 1) % 2]
    body = {"network": net_id, "action": "set", "list": False}
    return {
        "python_with_rule_arguments": lambda: _process([PYTHON, "-c", "pass"] + lists[0]),
        "cli_set": lambda: _process([SECNET_CLI, "policy", ref, "set"] + next_list()),
        "call_set": lambda: _inside(client.call, "/secnet/policy", dict(body, rules=next_list()), 600),
    }


def _cases(net_id: str, ref: str) -> dict:
    """name -> a function timing one run of it (ms); edits come in add/remove pairs."""
    cli = [SECNET_CLI]
    edit = {"network": net_id, "rules": [ONE_RULE], "list": False}
    return {
        "python_empty": lambda: _process([PYTHON, "-c", "pass"]),
        "python_import_cli": lambda: _process([PYTHON, "-c", "import plugin.cli.main"]),
        "cli_status": lambda: _process(cli + ["status"]),
        "cli_add": lambda: _process(cli + ["policy", ref, "add", ONE_RULE]),
        "cli_remove": lambda: _process(cli + ["policy", ref, "remove", ONE_RULE]),
        "cli_add_json": lambda: _process(cli + ["--json", "policy", ref, "add", ONE_RULE]),
        "cli_remove_json": lambda: _process(cli + ["--json", "policy", ref, "remove", ONE_RULE]),
        "resolve_network": lambda: _inside(client.resolve_network, ref),
        "call_status": lambda: _inside(client.call, "/secnet/status", {}),
        "call_add": lambda: _inside(client.call, "/secnet/policy", dict(edit, action="add")),
        "call_remove": lambda: _inside(client.call, "/secnet/policy", dict(edit, action="remove")),
        "call_add_listed": lambda: _inside(client.call, "/secnet/policy", dict(edit, action="add", list=True)),
        "call_remove_listed": lambda: _inside(client.call, "/secnet/policy", dict(edit, action="remove", list=True)),
    }


def _timed(cases: dict, repeats: int) -> dict:
    times: dict = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(fn())
    return times


@contextmanager
def _shared(rules: int):
    """The network ``snbench-cliedit`` with ``rules`` rules on the shared daemon: (id, name)."""
    docker("network", "rm", NET, check=False)
    net_id = create_network(NET, "secnet", SUBNET)
    try:
        t0 = now()
        client.call("/secnet/policy", {"network": net_id, "action": "set", "rules": sweep_rules(rules, 0),
                                       "list": False}, timeout=600)
        log(f"cliedit: {rules} rules set in {(now() - t0) * 1000:.0f} ms")
        yield net_id, NET
    finally:
        docker("network", "rm", NET, check=False)


@contextmanager
def _scale(rules: int, endpoints: int):
    """The scale section's network on the shared daemon, as ``make bench`` times its edits:
    ``snbench-scale`` with its two containers, ``endpoints`` endpoints through the plugin
    API and ``rules`` rules (+ the flow's two): (id, name)."""
    from dataclasses import replace
    from .common import Cleanup, Sizes
    from .scale import FLOW_RULES, NET as SCALE_NET, Scale
    cleanup = Cleanup()
    sizes = replace(Sizes.small(), endpoints=endpoints, join_marks=(1, endpoints), rss_marks=())
    sc = Scale(sizes, cleanup)
    try:
        sc.setup()
        sc.grow()
        client.call("/secnet/policy", {"network": sc.nid, "action": "set", "list": False,
                                       "rules": sweep_rules(rules, 0) + FLOW_RULES}, timeout=600)
        yield sc.nid, SCALE_NET
    finally:
        cleanup.run()
        sc.plugin.close()


@contextmanager
def _private(rules: int, endpoints: int, flow: bool = False, stamps: str = None, tree: str = REPO):
    """A stand-in daemon (bench.cliserve) in a throwaway namespace: (network id, id).
    ``stamps``: a file for its requests' stages (``bench.stages``); ``tree``: the
    checkout whose daemon it runs (bench.cliab: a base tree's), with this venv's Python."""
    from .handler import NET_ID
    ns = f"{PREFIX}-cli{os.getpid()}-{next(_SERIAL)}"
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as tmp:
        sock = os.path.join(tmp, "secnet.sock")
        sh(["ip", "netns", "add", ns])
        proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, "-m", "bench.cliserve", sock,
                                 os.path.join(tmp, "state"), "--rules", str(rules), "--endpoints",
                                 str(endpoints)] + (["--flow"] if flow else [])
                                + (["--stamps", stamps] if stamps else []), cwd=tree)
        saved = os.environ.get("SECNET_SOCKET")
        os.environ["SECNET_SOCKET"] = sock
        try:
            _wait_for(sock, proc)
            yield NET_ID, NET_ID
        finally:
            os.environ.pop("SECNET_SOCKET") if saved is None else os.environ.update(SECNET_SOCKET=saved)
            proc.terminate()
            proc.wait(timeout=30)
            sh(["ip", "netns", "del", ns], check=False)


def _wait_for(sock: str, proc, patience: float = 120.0) -> None:
    give_up = now() + patience
    while True:
        try:
            client.call("/secnet/status", {}, timeout=5)
            return
        except client.CliError:
            if proc.poll() is not None or now() > give_up:
                raise RuntimeError("the stand-in daemon did not answer") from None
            time.sleep(0.2)


def run(rules: int, repeats: int, private: bool = False, endpoints: int = 1000, flow: bool = False,
        scale: bool = False, sets: bool = False) -> dict:
    """Medians (ms) of every case; ``sets``: ``policy set`` of ``rules`` rules too, and with
    ``private``, the stand-in daemon's stages of each kind of request (``stages``)."""
    with tempfile.NamedTemporaryFile(prefix=f"{PREFIX}-stamps-", suffix=".jsonl") as stamps:
        world = (_private(rules, endpoints, flow, stamps.name if sets else None) if private
                 else _scale(rules, endpoints) if scale else _shared(rules))
        with world as (net_id, ref):
            cases = dict(_cases(net_id, ref), **(_set_cases(net_id, ref, rules) if sets else {}))
            times = _timed(cases, repeats)
        staged = summary(stamps.name) if sets and private else None
    out = {name: stats(values) for name, values in times.items()}
    if staged:
        out["stages"] = staged
    status = out["cli_status"]["median"]
    ratios = {f"{k}_per_status": round(out[k]["median"] / status, 2)
              for k in ("cli_add", "cli_remove", "cli_add_json", "cli_remove_json")}
    return {"rules": rules, "repeats": repeats, "private": private, "flow": flow, "scale": scale, **ratios, **out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--private", action="store_true", help="a stand-in daemon, not the shared one")
    parser.add_argument("--endpoints", type=int, default=1000, help="with --private or --scale")
    parser.add_argument("--scale", action="store_true",
                        help="the scale section's network (its two containers, M endpoints) on the shared daemon")
    parser.add_argument("--sets", action="store_true",
                        help="policy set of N rules too (with --private: and the daemon's stages, bench.stages)")
    parser.add_argument("--flow", action="store_true",
                        help="with --private: one established flow between two members (bench.handler --flow)")
    args = parser.parse_args()
    if args.flow and not args.private:
        parser.error("--flow needs --private")
    if args.scale and args.private:
        parser.error("--scale is the shared daemon's; --private a stand-in's")
    found = run(args.rules, args.repeats, args.private, args.endpoints, args.flow, args.scale, args.sets)
    json.dump(found, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
