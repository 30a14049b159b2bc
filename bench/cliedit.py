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
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from plugin.cli import client

from .common import PREFIX, REPO, SECNET_CLI, create_network, docker, log, now, sh, stats
from .scale import ONE_RULE, sweep_rules

NET = f"{PREFIX}-cliedit"
SUBNET = "10.216.16.0/24"
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def _process(args: list) -> float:
    t0 = now()
    sh(args)
    return (now() - t0) * 1000


def _inside(fn, *args) -> float:
    t0 = now()
    fn(*args)
    return (now() - t0) * 1000


def _cases(net_id: str) -> dict:
    """name -> a function timing one run of it (ms); edits come in add/remove pairs."""
    cli = [SECNET_CLI]
    edit = {"network": net_id, "rules": [ONE_RULE]}
    return {
        "python_empty": lambda: _process([PYTHON, "-c", "pass"]),
        "python_import_cli": lambda: _process([PYTHON, "-c", "import plugin.cli.main"]),
        "cli_status": lambda: _process(cli + ["status"]),
        "cli_add": lambda: _process(cli + ["policy", NET, "add", ONE_RULE]),
        "cli_remove": lambda: _process(cli + ["policy", NET, "remove", ONE_RULE]),
        "cli_add_json": lambda: _process(cli + ["--json", "policy", NET, "add", ONE_RULE]),
        "cli_remove_json": lambda: _process(cli + ["--json", "policy", NET, "remove", ONE_RULE]),
        "resolve_name": lambda: _inside(client.resolve_network, NET),
        "call_status": lambda: _inside(client.call, "/secnet/status", {}),
        "call_add": lambda: _inside(client.call, "/secnet/policy", dict(edit, action="add")),
        "call_remove": lambda: _inside(client.call, "/secnet/policy", dict(edit, action="remove")),
    }


def run(rules: int, repeats: int) -> dict:
    docker("network", "rm", NET, check=False)
    net_id = create_network(NET, "secnet", SUBNET)
    try:
        t0 = now()
        client.call("/secnet/policy", {"network": net_id, "action": "set", "rules": sweep_rules(rules, 0)},
                    timeout=600)
        log(f"cliedit: {rules} rules set in {(now() - t0) * 1000:.0f} ms")
        cases = _cases(net_id)
        times: dict = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                times[name].append(fn())
    finally:
        docker("network", "rm", NET, check=False)
    out = {name: stats(values) for name, values in times.items()}
    status = out["cli_status"]["median"]
    ratios = {f"{k}_per_status": round(out[k]["median"] / status, 2)
              for k in ("cli_add", "cli_remove", "cli_add_json", "cli_remove_json")}
    return {"rules": rules, "repeats": repeats, **ratios, **out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    found = run(args.rules, args.repeats)
    json.dump(found, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
