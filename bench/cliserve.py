"""A stand-in daemon for the CLI's timings, inside a throwaway network namespace.

Run as root, inside the namespace (``bench.cliedit --private`` does it):
``python -m bench.cliserve SOCKET STATE_DIR [--rules N] [--endpoints M] [--flow] [--stamps FILE]``. It builds
what ``bench.handler`` builds -- a real SQLite state in STATE_DIR, the
reconciler, the nftables backend, conntrack pruning with the flow index -- with
one network of M endpoints and N rules (``--flow``: and ``bench.handler.add_flow``'s
established flow between two of them), and serves the daemon's Flask app
(driver routes and the CLI's ``/secnet/`` routes) with gunicorn as
``secnet-plugin`` does (one gthread worker, 8 threads, the RSS trimmer) on the
unix socket SOCKET, until killed. Nothing outside the namespace and the
state directory is touched, and Docker never hears of it (``--stamps FILE``: the stages
of every request timed into FILE, :mod:`bench.stages`): for comparing the
CLI's commands with each other while the shared daemon is busy (no engine
lookups, DNS service, label watcher or firewall here).
"""
from __future__ import annotations

import argparse

from gunicorn.app.base import BaseApplication

from plugin.daemon.app import create_app
from plugin.daemon.server import Trimmer
from plugin.driver.state import State

from .handler import _started_index, _world, add_flow


class _Server(BaseApplication):
    def __init__(self, socket_path: str, state_dir: str, rules: int, endpoints: int, flow: bool = False):
        self.socket_path, self.state_dir, self.rules, self.endpoints = socket_path, state_dir, rules, endpoints
        self.flow = flow
        super().__init__()

    def load_config(self):
        for key, value in {"bind": [f"unix:{self.socket_path}"], "workers": 1, "worker_class": "gthread",
                           "threads": 8, "umask": 0o077, "timeout": 0, "loglevel": "warning",
                           "errorlog": "-", "proc_name": "snbench-cliserve"}.items():
            self.cfg.set(key, value)

    def load(self):
        api = _world(State(self.state_dir), self.rules, self.endpoints, _started_index())
        if self.flow:
            add_flow()
        return Trimmer().start().wrap(create_app(api.driver, api))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("state_dir")
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--flow", action="store_true", help="one established flow between two members")
    parser.add_argument("--stamps", metavar="FILE", help="each request's stages timed into FILE (bench.stages)")
    args = parser.parse_args()
    if args.stamps:
        from .stages import install
        install(args.stamps)
    _Server(args.socket, args.state_dir, args.rules, args.endpoints, args.flow).run()


if __name__ == "__main__":
    main()
