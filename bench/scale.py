"""Section 4, scale: joins, rule updates and daemon memory with many endpoints.

Method. A secnet network ``snbench-scale`` is created through Docker
(``--subnet 10.216.0.0/20 --ip-range 10.216.0.0/24``: Docker's IPAM hands
out only 10.216.0.x) with two real containers, the client (segment ``bcli``)
and the server (segment ``s99``). The 1,000 endpoints are driven through
the plugin API directly, the way dockerd drives it: ``POST
/NetworkDriver.CreateEndpoint`` (address from 10.216.4.1 upwards, driver
option ``secnet.segment=s<k>``, 10 consecutive endpoints per segment,
segments s0..s99) then ``/NetworkDriver.Join``, one request at a time over
one kept-alive connection to the unix socket. Each endpoint gets its veth
pair (host side on the bridge; the peer stays down in the host namespace,
since no container takes it). The network's rules at that point name every
segment (a ring ``s<i>->s<i+1>:tcp/80``, 100 rules), so joins are the
steady-state path (set-element changes), not new-segment rebuilds.

A join is CreateEndpoint + Join (what dockerd waits for when it attaches a
container). "The n-th join" is the median (min, max) of the five joins
n..n+4 (the last five for the last mark); next to it, the median of the 21
joins around n (the first 21 for the first mark, the last 21 for the last),
which one slow join in five does not move. Rule updates: ``secnet policy
snbench-scale set`` with N rules ``s<i>->s<j>:tcp/<port>`` over the 100
segments (plus the two rules of the measured flow), run as the CLI (a new
Python process each time, like a user), alternating two rule sets that
differ in every port so that each call is a real change. Daemon RSS is the
sum of VmRSS of the secnet-plugin processes (next to it, under ``pss_mib``,
the sum of their Pss, which counts pages they share once). At the end every endpoint gets
Leave + DeleteEndpoint, the containers are removed and the network too.
"""
from __future__ import annotations

import ipaddress
import os

from .common import (PREFIX, Cleanup, create_network, disturbances, docker, log, now, Plugin, PluginError,
                     run_container, sandbox_key, sh, stats)
from .daemon import daemon_rss_sample, secnet_cli
from .dataplane import IPERF_PORT, Pair, measure

NET = f"{PREFIX}-scale"
SUBNET, IP_RANGE = "10.216.0.0/20", "10.216.0.0/24"
FIRST_FAKE = ipaddress.IPv4Address("10.216.4.1")
SEGMENTS = 100
FLOW_RULES = [f"bcli->s99:tcp/{IPERF_PORT}", "bcli->s99:icmp"]
ONE_RULE = "s1->s2:tcp/7"  # added and removed with N rules in force
WIDE = 21                   # joins around a mark in its second, steadier figure


def _around(clean: list, mark: int, width: int) -> list:
    """``width`` consecutive undisturbed joins (numbers from ``clean``, sorted) centred on
    ``mark``, shifted inwards at either end (all of them when there are fewer)."""
    at = sum(1 for i in clean if i < mark)
    start = max(0, min(at - width // 2, len(clean) - width))
    return clean[start:start + width]


def ring_rules() -> list:
    return [f"s{i}->s{(i + 1) % SEGMENTS}:tcp/80" for i in range(SEGMENTS)]


def sweep_rules(n: int, variant: int) -> list:
    """``n`` distinct rules over the segment pairs; ``variant`` shifts every port."""
    rules = []
    for k in range(n):
        i, j = k % SEGMENTS, (k // SEGMENTS) % SEGMENTS
        port = 1000 + (k // (SEGMENTS * SEGMENTS)) * 10 + variant
        rules.append(f"s{i}->s{j}:tcp/{port}")
    return rules


def endpoint_id(i: int) -> str:
    head = f"5b{i:06x}"  # veth names use the first 11 characters: unique per i
    return (head + os.urandom(32).hex())[:64]


class Scale:
    def __init__(self, sizes, cleanup: Cleanup):
        self.sizes = sizes
        self.cleanup = cleanup
        self.plugin = Plugin()
        self.nid = None
        self.endpoints: list = []  # (eid) in creation order
        self.pair = None
        self.result: dict = {"method": __doc__.strip()}
        self._grow = {"create": [], "join": [], "disturbed": [], "rss": {}, "t_start": None}

    # --- set-up -----------------------------------------------------------------
    def setup(self) -> Pair:
        allow = ",".join(ring_rules() + FLOW_RULES)
        create_network(NET, "secnet", SUBNET, "--ip-range", IP_RANGE, "-o", f"secnet.allow={allow}")
        self.cleanup.push(f"network {NET}", docker, "network", "rm", NET)
        self.cleanup.push("fake endpoints", self.remove_endpoints)
        self.nid = docker("network", "inspect", "-f", "{{.Id}}", NET)
        keys = []
        for role, ip, seg in (("cli", "10.216.0.10", "bcli"), ("srv", "10.216.0.11", "s99")):
            name = f"{NET}-{role}"
            run_container(name, NET, ip, {"secnet.segment": seg})
            self.cleanup.push(name, docker, "rm", "-f", name)
            keys.append(sandbox_key(name))
        self.pair = Pair("secnet-scale", keys[0], keys[1], "10.216.0.11")
        return self.pair

    def _join(self, i: int, seg: str = None) -> tuple:
        """CreateEndpoint + Join of fake endpoint ``i``: (create ms, join ms, disturbed)."""
        eid = endpoint_id(i)
        n0 = disturbances()
        addr = FIRST_FAKE + (i - 1)
        seg = seg or f"s{((i - 1) * SEGMENTS // self.sizes.endpoints) % SEGMENTS}"
        t0 = now()
        self.plugin.post("/NetworkDriver.CreateEndpoint", {
            "NetworkID": self.nid, "EndpointID": eid,
            "Interface": {"Address": f"{addr}/20", "AddressIPv6": "", "MacAddress": ""},
            "Options": {"secnet.segment": seg}})
        disturbed = self.plugin.retried
        self.endpoints.append(eid)
        t1 = now()
        self.plugin.post("/NetworkDriver.Join", {"NetworkID": self.nid, "EndpointID": eid,
                                                 "SandboxKey": "", "Options": {}})
        t2 = now()
        disturbed = disturbed or self.plugin.retried or disturbances() != n0
        return (t1 - t0) * 1000, (t2 - t1) * 1000, disturbed

    def _leave(self, eid: str) -> tuple:
        """Leave + DeleteEndpoint: (ms, disturbed)."""
        n0 = disturbances()
        t0 = now()
        self.plugin.post("/NetworkDriver.Leave", {"NetworkID": self.nid, "EndpointID": eid})
        disturbed = self.plugin.retried
        self.plugin.post("/NetworkDriver.DeleteEndpoint", {"NetworkID": self.nid, "EndpointID": eid})
        ms = (now() - t0) * 1000
        return ms, disturbed or self.plugin.retried or disturbances() != n0

    def alive(self) -> bool:
        """Our network and both containers still there (others' tests remove
        every secnet network when they take the machine)?"""
        res = sh(["docker", "inspect", "-f", "{{.State.Running}}", f"{NET}-cli", f"{NET}-srv"], check=False)
        return res.returncode == 0 and res.stdout.split() == ["true", "true"]

    def grow(self) -> None:
        """Endpoints 1..n; resumable: a second call goes on from where the first stopped."""
        n = self.sizes.endpoints
        g = self._grow
        if not g["rss"]:
            log(f"scale: {n} endpoints through the plugin API")
            g["rss"][0] = daemon_rss_sample()
            g["t_start"] = now()
        for i in range(len(g["create"]) + 1, n + 1):
            try:
                c, j, d = self._join(i)
            except PluginError as exc:
                if "already exists" not in str(exc):
                    raise
                # a veth left half-made by a daemon killed mid-request: another id
                log(f"  endpoint {i}: {exc}; again with another id")
                c, j, d = self._join(i)
                d = True
            g["create"].append(c)
            g["join"].append(j)
            if d:
                g["disturbed"].append(i)
            if i in self.sizes.rss_marks:
                g["rss"][i] = daemon_rss_sample()
            if i % 200 == 0:
                log(f"  {i} endpoints")
        create, join, disturbed = g["create"], g["join"], g["disturbed"]
        total = [c + j for c, j in zip(create, join)]
        clean = [i for i in range(1, n + 1) if i not in disturbed]
        marks, wide = {}, {}
        for m in self.sizes.join_marks:
            # five consecutive undisturbed joins from m on (the last five for the last mark)
            after = [i for i in clean if i >= m][:5]
            window = after if len(after) == 5 else [i for i in clean if i <= m][-5:]
            marks[str(m)] = {"window": [min(window), max(window)],
                             **stats(total[i - 1] for i in window)}
            window = _around(clean, m, WIDE)
            wide[str(m)] = {"window": [min(window), max(window)], **stats(total[i - 1] for i in window)}
        ok = lambda xs: [x for i, x in enumerate(xs, 1) if i not in disturbed]
        self.result["joins"] = {
            "count": n, "seconds_total": now() - g["t_start"], "marks": marks, "marks_wide": wide,
            "create_endpoint_ms": stats(ok(create)), "join_ms": stats(ok(join)),
            "total_ms": stats(ok(total)), "raw_total_ms": total,
            "disturbed_by_daemon_restart": disturbed}
        self.result["rss_mib"] = {str(k): v for k, v in g["rss"].items()}

    def remove_endpoints(self) -> None:
        if not self.endpoints:
            return
        log(f"scale: Leave + DeleteEndpoint of {len(self.endpoints)} endpoints")
        times, disturbed = [], 0
        while self.endpoints:
            eid = self.endpoints[-1]
            try:
                ms, d = self._leave(eid)
                disturbed += d
                if not d:
                    times.append(ms)
            finally:
                self.endpoints.pop()
        self.result["leaves"] = {"count": len(times) + disturbed, "total_ms": stats(times),
                                 "disturbed_by_daemon_restart": disturbed}
        self.result["rss_after_removal_mib"] = daemon_rss_sample()

    # --- rules ------------------------------------------------------------------------
    def policy_set(self, rules: list):
        """ms of one ``secnet policy NET set RULES...``; None when the daemon was
        restarted under it (it is then sent again, untimed)."""
        ms, disturbed = secnet_cli("policy", NET, "set", *rules)
        return None if disturbed else ms

    def sweep(self) -> None:
        """Rule-update latency and throughput against N rules (ascending; ends at max N)."""
        s = self.sizes
        out = {}
        base_get = []
        for _ in range(3):
            ms, disturbed = secnet_cli("policy", NET)
            if not disturbed:
                base_get.append(ms)
        self.result["cli_get_ms"] = stats(base_get)
        self.result["cli_status_ms"] = stats(self._cli_times(("status",), 5))
        # the flow without any sweep rules (N = 0): only the flow's own rules
        self.policy_set(FLOW_RULES)
        out["0"] = {"dataplane": measure([self.pair], s.sweep_repeats, s.iperf_secs)[self.pair.name]}
        for n in s.rule_counts:
            times = [self.policy_set(sweep_rules(n, rep % 2) + FLOW_RULES)
                     for rep in range(s.update_repeats)]
            log(f"  policy set with {n} rules: {times} ms")
            status, add, rm = self.edit_times(s.update_repeats)
            log(f"  one rule add/remove with {n} in force: {add} / {rm} ms (status {status} ms)")
            out[str(n)] = {"policy_set_ms": stats(times), "raw_policy_set_ms": times,
                           "one_rule_add_ms": stats(add), "one_rule_remove_ms": stats(rm),
                           "status_ms": stats(status),
                           "dataplane": measure([self.pair], s.sweep_repeats, s.iperf_secs)[self.pair.name]}
        self.result["sweep"] = out
        if s.scale_rules != s.rule_counts[-1]:  # the joins and the scale data plane at scale_rules
            self.policy_set(sweep_rules(s.scale_rules, 0) + FLOW_RULES)

    def edit_times(self, repeats: int) -> tuple:
        """ms lists ``(status, add, remove)``: ``repeats`` rounds of ``secnet status``, one rule
        added, the same rule removed (each CLI call undisturbed by a daemon restart). The
        status runs next to the edits it is the floor of: on a shared machine, figures taken
        minutes apart differ by more than the edits cost."""
        out: tuple = ([], [], [])
        calls = (("status",), ("policy", NET, "add", ONE_RULE), ("policy", NET, "remove", ONE_RULE))
        for _ in range(repeats):
            for times, args in zip(out, calls):
                ms, disturbed = secnet_cli(*args)
                if not disturbed:
                    times.append(ms)
        return out

    def _cli_times(self, args: tuple, repeats: int, undo: tuple = None, before: bool = False) -> list:
        """ms of ``repeats`` undisturbed CLI calls ``args``; ``undo`` (untimed) after
        each (or before each, with ``before``)."""
        times = []
        for _ in range(repeats):
            if undo and before:
                secnet_cli(*undo)
            ms, disturbed = secnet_cli(*args)
            if not disturbed:
                times.append(ms)
            if undo and not before:
                secnet_cli(*undo)
        return times

    def joins_at_max_rules(self, count: int = 5) -> None:
        """More joins (then leaves) with the largest rule set in place: into an
        existing segment (set elements only) and into a new segment (which
        changes the compiled policy: the network's tables are rebuilt)."""
        base = self.sizes.endpoints
        out = {"rules": self.sizes.scale_rules + len(FLOW_RULES), "endpoints": base}
        for kind, seg in (("existing_segment", None), ("new_segment", "fresh")):
            joins, leaves = [], []
            for k in range(count):
                c, j, d = self._join(base + 1 + k, seg and f"{seg}{k}")
                if not d:
                    joins.append(c + j)
            for _ in range(count):
                ms, d = self._leave(self.endpoints[-1])
                self.endpoints.pop()
                if not d:
                    leaves.append(ms)
            out[kind] = {"join_ms": stats(joins), "leave_ms": stats(leaves)}
        self.result["joins_at_max_rules"] = out
