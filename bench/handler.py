"""The daemon's own time for policy edits: its handler called directly, no CLI, no HTTP.

Run as root: ``python -m bench.handler [--rules N] [--endpoints M] [--repeats R]``. In a
throwaway network namespace it builds what the daemon holds for one network (a
real SQLite state in a temporary directory, the reconciler, the nftables backend,
conntrack pruning with the flow index the daemon runs -- ``--no-index``: without it,
every read dumps the table) with M endpoints over 100 segments and N rules as in
bench/scale.py, then times ``Api.policy`` -- the function the ``/secnet/policy``
route calls -- for one rule ``add`` and ``remove`` with N in force, and a ``set``
of N rules that differ in every port; and the reconciler's part of a join
(``endpoint_changed``) into a known segment and into a new one, at N rules. ``--flow``:
one established flow between two members (the scale section's network has its iperf
flow): a rule removal then judges it on the new policy, as in the daemon.
Prints medians and min/max (ms) as JSON. Issue 12's targets: one-rule edits
<= 10 ms here (p50); a join bringing a new segment <= 1.2x one into a known one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import uuid

from plugin.daemon.api import Api
from plugin.driver.driver import Driver
from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.nftables import NftBackend
from plugin.enforce.reconciler import Reconciler
from plugin.kernel import netns
from plugin.kernel.conntrack import Flows
from plugin.kernel.ctindex import FlowIndex
from segmentation.options import parse_network_options

from .common import stats
from .scale import FLOW_RULES, ONE_RULE, SEGMENTS, sweep_rules

NET_ID = "be0c5" + "0" * 59


def _world(state: State, rules: int, endpoints: int, index=None) -> Api:
    options = parse_network_options({"secnet.allow": ",".join(sweep_rules(rules, 0) + FLOW_RULES)})
    net = NetworkRecord(id=NET_ID, bridge="snbench1", mtu=1500, options=options,
                        ipv4=(("10.219.0.0/20", "10.219.0.1/20"),))
    state.put_network(net)
    state.put_endpoints(_endpoint(i, f"s{i % SEGMENTS}") for i in range(endpoints))
    reconciler = Reconciler(state, {"nftables": NftBackend()}, allocator=state, flows=Flows(index=index))
    reconciler.network_added(net)
    return Api(Driver(state, None, None, reconciler), reconciler)


def add_flow() -> None:
    """One established TCP flow (a conntrack entry, no packets) from endpoint 0 (segment
    s0) to endpoint 1 (s1) on port 1000, which rule ``s0->s1:tcp/1000`` allows: as the
    scale section's network carries its iperf flow, so that an edit's pruning judges
    a flow on the new policy. Call in the world's namespace."""
    subprocess.run(["conntrack", "-I", "-p", "tcp", "-s", "10.219.0.2", "-d", "10.219.0.3", "--sport", "40000",
                    "--dport", "1000", "--state", "ESTABLISHED", "-u", "ASSURED", "-t", "3600"],
                   check=True, capture_output=True)


def _timed(api: Api, action: str, rules: list) -> float:
    start = time.perf_counter()
    api.policy({"network": NET_ID, "action": action, "rules": rules})
    return (time.perf_counter() - start) * 1000


def _started_index(patience: float = 5.0) -> FlowIndex:
    """A flow index of this namespace, seeded, as the daemon runs one."""
    index = FlowIndex().start()
    give_up = time.monotonic() + patience
    while not index.complete and time.monotonic() < give_up:
        time.sleep(0.01)
    return index


def measure(rules: int, endpoints: int, repeats: int, index: bool = True, flow: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="snbench-") as tmp:
        state = State(f"{tmp}/state")
        flows = _started_index() if index else None
        try:
            api = _world(state, rules, endpoints, flows)
            if flow:
                add_flow()
                time.sleep(0.1)   # the index learns it from the NEW event
            add, remove = [], []
            for _ in range(repeats):
                add.append(_timed(api, "add", [ONE_RULE]))
                remove.append(_timed(api, "remove", [ONE_RULE]))
            sets = [_timed(api, "set", sweep_rules(rules, 1 + rep % 2) + FLOW_RULES) for rep in range(repeats)]
            joins = {kind: [_join(state, api.reconciler, endpoints + rep, seg)
                            for rep, seg in enumerate(segs)]
                     for kind, segs in (("known", ["s5"] * repeats), ("new", [f"snb{k}" for k in range(repeats)]))}
            api.reconciler.network_removed(state.get_network(NET_ID))
            dumps = api.reconciler.flows.dumps
        finally:
            state.close()
            if flows is not None:
                flows.stop()
    return {"flow_index": index, "flow": flow, "conntrack_dumps": dumps, "one_rule_add_ms": stats(add), "one_rule_remove_ms": stats(remove), "policy_set_ms": stats(sets),
            "join_known_segment_ms": stats(joins["known"]), "join_new_segment_ms": stats(joins["new"])}


def _join(state: State, reconciler: Reconciler, i: int, segment: str) -> float:
    """The reconciler's part of a join (``endpoint_changed``) of one more endpoint in
    ``segment``, timed; then the endpoint leaves again."""
    ep = _endpoint(i, segment)
    state.put_endpoint(ep)
    net = state.get_network(NET_ID)
    start = time.perf_counter()
    reconciler.endpoint_changed(net, ep)
    took = (time.perf_counter() - start) * 1000
    reconciler.endpoint_removed(net, ep)
    state.delete_endpoint(ep.id)
    return took


def _endpoint(i: int, segment: str) -> EndpointRecord:
    return EndpointRecord(id=f"5c{i:062x}", network_id=NET_ID, veth_host=f"snbh{i}", veth_peer="eth0",
                          mac=f"02:42:0a:db:{i // 256:02x}:{i % 256:02x}",
                          ipv4=f"10.219.{i // 250}.{i % 250 + 2}/20", segment=segment,
                          container=f"snbench-c{i}", joined=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-index", action="store_true", help="no conntrack flow index: every read dumps")
    parser.add_argument("--flow", action="store_true", help="one established flow between two members")
    args = parser.parse_args()
    name = f"snbench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        found = netns.run_in(f"/run/netns/{name}", measure, args.rules, args.endpoints, args.repeats,
                             not args.no_index, args.flow, timeout=600)
        print(json.dumps({"rules": args.rules, "endpoints": args.endpoints, **found}, indent=1))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
