"""The daemon's handler on an eBPF network: the levelling after the call vs inside it, interleaved.

Run as root: ``python -m bench.ebpf_level_ab [ROUNDS] [PAUSE_S]``. In a new network namespace,
a real state, the reconciler and an ``EbpfBackend`` (pins under a scratch directory of
``/sys/fs/bpf``, removed at the end) hold one network with 10,000 rules (``bench.scale``'s sweep,
no endpoints, no conntrack index); ``Api.policy`` then takes ``set``s of 10,000 others, each
round one with the backend's ``later`` as the daemon has it (a thread levels the version not
in force once the call lets go of the lock) and one with ``later`` running the levelling at
once inside the call (what the backend did before), in alternating order, PAUSE_S seconds
(untimed) before each. Prints JSON: per mode the calling thread's CPU and the wall time
(ms, medians), and the medians of the per-round ratios thread / inline.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid

from plugin.daemon.api import Api
from plugin.driver.driver import Driver
from plugin.driver.state import NetworkRecord, State
from plugin.enforce.ebpf.backend import EbpfBackend
from plugin.enforce.reconciler import Reconciler
from plugin.kernel import netns
from segmentation.options import parse_network_options

from . import handler
from .ebpf_set import OBJECT as OBJ
from .scale import FLOW_RULES, sweep_rules


def _world(state: State, backend: EbpfBackend) -> Api:
    """One eBPF network of 10,000 rules, no endpoints, in ``state``; the handler over it."""
    options = parse_network_options({"secnet.allow": ",".join(sweep_rules(10000, 0) + FLOW_RULES),
                                     "secnet.backend": "ebpf"})
    net = NetworkRecord(id=handler.NET_ID, bridge="snbench1", mtu=1500, options=options,
                        ipv4=(("10.219.0.0/20", "10.219.0.1/20"),))
    state.put_network(net)
    reconciler = Reconciler(state, {"ebpf": backend}, allocator=state)
    reconciler.network_added(net)
    return Api(Driver(state, None, None, reconciler), reconciler)


def run(rounds: int, pause: float) -> dict:
    """``rounds`` rounds (after one warm-up) of one set per mode; the figures (see the module doc)."""
    out: dict = {"thread": [], "inline": []}
    with tempfile.TemporaryDirectory(prefix="snbench-") as tmp:
        state = State(f"{tmp}/state")
        backend = EbpfBackend(pin_root=f"/sys/fs/bpf/secnet-bench-{uuid.uuid4().hex[:8]}", obj_path=OBJ)
        modes = {"thread": backend.later, "inline": lambda fn: fn()}
        try:
            api, variant = _world(state, backend), 1
            for r in range(rounds + 1):
                for mode in (("thread", "inline") if r % 2 == 0 else ("inline", "thread")):
                    backend.later = modes[mode]
                    time.sleep(pause)
                    rules, variant = sweep_rules(10000, variant) + FLOW_RULES, 3 - variant
                    cpu, wall = time.thread_time(), time.perf_counter()
                    api.policy({"network": handler.NET_ID, "action": "set", "list": False, "rules": rules})
                    if r:
                        out[mode].append(((time.thread_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000))
            time.sleep(pause)
            api.reconciler.network_removed(state.get_network(handler.NET_ID))
        finally:
            state.close()
            backend.close()
            shutil.rmtree(backend.root, ignore_errors=True)
    return summary(out)


def summary(out: dict) -> dict:
    res: dict = {mode: {"cpu_ms_median": round(statistics.median(x[0] for x in v), 1),
                        "wall_ms_median": round(statistics.median(x[1] for x in v), 1),
                        "wall_ms_min": round(min(x[1] for x in v), 1)} for mode, v in out.items()}
    pairs = list(zip(out["thread"], out["inline"]))
    res["thread/inline cpu (median of rounds)"] = round(statistics.median(a[0] / b[0] for a, b in pairs), 3)
    res["thread/inline wall (median of rounds)"] = round(statistics.median(a[1] / b[1] for a, b in pairs), 3)
    res["rounds"] = len(pairs)
    return res


if __name__ == "__main__":
    rounds, pause = (int(sys.argv[1]) if len(sys.argv) > 1 else 12), (float(sys.argv[2]) if len(sys.argv) > 2 else 0.5)
    print(json.dumps(netns.run_in_new(lambda: run(rounds, pause), timeout=1200), indent=1))
