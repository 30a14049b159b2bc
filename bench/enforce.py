"""Section 2, time to enforce.

A secnet network with the rule ``client->web:tcp/80`` and two long-running
peers: ``client`` (allowed) and ``evil`` (a segment no rule names). Each run
starts a new ``web`` container at a fresh fixed address, listening on
tcp/80. Both peers probe that address continuously from their own network
namespaces (a thread of this process in each, TCP connect with a 10 ms
timeout; a SYN-ACK or an RST both count as an answer, since either means the
packets passed). Measured: from `docker run -d` returning until the client's
first answer, and every answer the evil peer got (must be 0). The probing
starts before `docker run` is called and goes on until the container is
removed.
"""
from __future__ import annotations

import calendar
import time

from .common import (PREFIX, SECNET_CLI, Cleanup, create_network, disturbances, docker, log, now,
                     run_container, sandbox_key, set_neigh_retrans, sh, stats)
from .daemon import secnet_cli
from .probes import FrameWitness, Prober

NET = f"{PREFIX}-enforce"
SUBNET, BASE = "10.215.0.0/24", "10.215.0"
PORT = 80
TIMEOUT = 5.0


def started_at(container: str):
    """The engine's State.StartedAt of ``container`` as a Unix time (ns precision kept)."""
    text = docker("inspect", "-f", "{{.State.StartedAt}}", container)
    try:
        date, frac = text.rstrip("Z").split(".")
        base = calendar.timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%S"))
        return base + float("0." + frac)
    except ValueError:
        return None


def positive_control(evil: Prober, run_id: int) -> dict:
    """Allow evil->web for one more container: the same prober must now get answers
    (shows that 0 forbidden answers is the policy, not a broken probe)."""
    secnet_cli("policy", NET, "add", f"evil->web:tcp/{PORT}")
    ip, name = f"{BASE}.{20 + run_id}", f"{PREFIX}-enf-web-ctl"
    evil.set_target("control", ip)
    t0 = now()
    run_container(name, NET, ip, {"secnet.segment": "web"}, cmd=("nc", "-ll", "-p", str(PORT), "-e", "true"))
    try:
        while "control" not in evil.first and now() < t0 + TIMEOUT:
            time.sleep(0.001)
        time.sleep(0.2)
    finally:
        docker("rm", "-f", name)
        evil.set_target("after-control", f"{BASE}.254")
    first = evil.first.get("control")
    return {"rule_added": f"evil->web:tcp/{PORT}", "answers": evil.answers.get("control", 0),
            "probes": evil.probes.get("control", 0),
            "first_answer_ms_after_run_start": None if first is None else (first - t0) * 1000}


def _switch(evil: Prober, key, mode: str) -> tuple:
    """``secnet mode NET mode``; (ms from the command returning until the new mode
    is in force, ms of the command). Audit: until the evil peer's first answer;
    enforce: until its last answer (0 when none came after the return), read
    after a quiet second."""
    evil.set_target(key, evil.target[1])
    t0 = now()
    sh([SECNET_CLI, "mode", NET, mode])
    t1 = now()
    if mode == "audit":
        while key not in evil.first and now() < t1 + TIMEOUT:
            time.sleep(0.001)
        first = evil.first.get(key)
        return (None if first is None else max(0.0, first - t1) * 1000), (t1 - t0) * 1000
    time.sleep(1.0)
    last = evil.last.get(key)
    if last is not None and last > now() - 0.5:
        return None, (t1 - t0) * 1000  # still answered: enforce mode not in force
    return (0.0 if last is None or last <= t1 else (last - t1) * 1000), (t1 - t0) * 1000


def mode_switches(evil: Prober, runs: int) -> dict:
    """Time for ``secnet mode NET audit|enforce`` to take effect, with the evil
    peer probing a web container it may not reach (``runs`` switches, half
    each way)."""
    ip, name = f"{BASE}.250", f"{PREFIX}-enf-web-mode"
    run_container(name, NET, ip, {"secnet.segment": "web"}, cmd=("nc", "-ll", "-p", str(PORT), "-e", "true"))
    got = {"audit": [], "enforce": []}
    cmd = {"audit": [], "enforce": []}
    failed = {"audit": 0, "enforce": 0}
    try:
        evil.set_target(("mode", -1), ip)
        time.sleep(0.3)
        for i in range(runs):
            mode = "audit" if i % 2 == 0 else "enforce"
            ms, cmd_ms = _switch(evil, ("mode", i), mode)
            cmd[mode].append(cmd_ms)
            if ms is None:
                failed[mode] += 1
            else:
                got[mode].append(ms)
    finally:
        sh([SECNET_CLI, "mode", NET, "enforce"], check=False)
        docker("rm", "-f", name)
    log(f"mode switches: to audit {got['audit']} ms, to enforce {got['enforce']} ms")
    return {"switches": runs, "method": mode_switches.__doc__.strip() + " " + _switch.__doc__.strip(),
            **{f"to_{m}_ms": stats(got[m]) for m in got}, **{f"to_{m}_cmd_ms": stats(cmd[m]) for m in cmd},
            **{f"to_{m}_not_in_force": failed[m] for m in failed},
            "all_ms": stats(got["audit"] + got["enforce"])}


class Tally:
    """What the starts measured: ms lists and counts (see ``run``'s result keys)."""

    def __init__(self):
        self.since_return, self.since_start, self.signed, self.since_started_at = [], [], [], []
        self.not_answered = self.before_return = self.disturbed = 0
        self.spans: dict = {}   # run -> (address, docker run began, returned, docker rm began, returned)

    def add(self, first, t0: float, t1: float, started) -> None:
        """One start: ``first`` answer (perf_counter s or None), ``t0``/``t1`` around
        `docker run`, ``started`` the engine's StartedAt on the perf_counter clock."""
        if first is None:
            self.not_answered += 1
            return
        self.since_start.append((first - t0) * 1000)
        self.since_return.append(max(0.0, first - t1) * 1000)
        self.before_return += first <= t1
        self.signed.append((first - t1) * 1000)
        if started is not None:
            self.since_started_at.append((first - started) * 1000)


def _probers(cleanup: Cleanup) -> dict:
    """The network, the client and evil peers, and a started Prober in each (role -> Prober)."""
    create_network(NET, "secnet", SUBNET, "-o", f"secnet.allow=client->web:tcp/{PORT}")
    cleanup.push("network", docker, "network", "rm", NET)
    probers = {}
    for role, ip in (("client", f"{BASE}.2"), ("evil", f"{BASE}.3")):
        name = f"{PREFIX}-enf-{role}"
        run_container(name, NET, ip, {"secnet.segment": role})
        cleanup.push(name, docker, "rm", "-f", name)
        key = sandbox_key(name)
        set_neigh_retrans(key, "eth0")
        probers[role] = Prober(key, PORT, f"probe-{role}")
    for p in probers.values():
        p.start()
        cleanup.push(f"prober {p.name}", p.stop)
    web = f"{BASE}."
    witness = FrameWitness(probers["evil"].netns, lambda a: a.startswith(web) and int(a[len(web):]) >= 20)
    witness.start()
    cleanup.push("frame witness", witness.stop)
    probers["witness"] = witness
    return probers


def _start_once(i: int, probers: dict, tally: Tally, wall: float) -> None:
    """Start web container ``i`` with both peers probing its address; record it in ``tally``
    (and the times of its `docker run` and `docker rm` in ``tally.spans[i]``)."""
    ip, name = f"{BASE}.{20 + i}", f"{PREFIX}-enf-web-{i}"
    for role in ("client", "evil"):
        probers[role].set_target(i, ip)
    n0 = disturbances()
    t0 = now()
    run_container(name, NET, ip, {"secnet.segment": "web"}, cmd=("nc", "-ll", "-p", str(PORT), "-e", "true"))
    t1 = now()
    client = probers["client"]
    while i not in client.first and now() < t1 + TIMEOUT:
        if client.error:
            raise RuntimeError(f"client prober: {client.error}")
        time.sleep(0.001)
    first = client.first.get(i)
    if disturbances() != n0:
        tally.disturbed += 1  # the daemon was away under `docker run`: no timing
    else:
        if first is None:
            log(f"enforce: run {i}: the allowed peer got no answer within {TIMEOUT} s")
        started = started_at(name) if first is not None else None
        tally.add(first, t0, t1, None if started is None else started - wall)
    r0 = now()
    docker("rm", "-f", name)
    tally.spans[i] = (ip, t0, t1, r0, now())


def _answers(log: list, frames: list, spans: dict) -> list:
    """Each answer of the evil peer's sockets: ms after its container's `docker run` began,
    ms before `docker rm` returned, and the frames from that address within 0.5 s of it."""
    out = []
    for t, key, ip, kind in log:
        span = spans.get(key)
        seen = sum(1 for ft, src, _p, _f in frames if src == ip and abs(ft - t) <= 0.5)
        out.append({"run": key, "address": ip, "kind": kind, "frames_from_it_within_0.5s": seen,
                    "ms_after_run_began": None if span is None else round((t - span[1]) * 1000, 1),
                    "ms_before_rm_returned": None if span is None else round((span[4] - t) * 1000, 1)})
    return out


def forbidden_answer_lines(en: dict, most: int = 10) -> list:
    """The report's lines of the evil peer's socket answers (``run``'s ``forbidden_answers``)."""
    return [f"  - socket answer: run {a['run']}, {a['address']}, {a['kind']}, {a['ms_after_run_began']} ms "
            f"after its `docker run` began, {a['ms_before_rm_returned']} ms before its `docker rm` "
            f"returned; frames from it within 0.5 s: {a['frames_from_it_within_0.5s']}"
            for a in en.get("forbidden_answers", [])[:most]]


def run(sizes) -> dict:
    """Section 2: ``sizes.enforce_runs`` starts, then mode switches and the positive control."""
    cleanup, tally = Cleanup(), Tally()
    wall = time.time() - now()  # perf_counter -> wall clock, for the engine's StartedAt
    try:
        probers = _probers(cleanup)
        log(f"time to enforce: {sizes.enforce_runs} runs")
        for i in range(sizes.enforce_runs):
            _start_once(i, probers, tally, wall)
        evil, witness = probers["evil"], probers["witness"]
        forbidden_ok, forbidden_probes = sum(evil.answers.values()), sum(evil.probes.values())
        frames, answers = list(witness.frames), _answers(evil.answer_log, witness.frames, tally.spans)
        allowed_probes = sum(probers["client"].probes.values())
        switches = mode_switches(evil, sizes.mode_switches)
        control = positive_control(evil, sizes.enforce_runs)
        if evil.error:
            raise RuntimeError(f"evil prober: {evil.error}")
    finally:
        cleanup.run()
    return {
        "runs": sizes.enforce_runs,
        "since_run_returned_ms": stats(tally.since_return),
        "since_run_started_ms": stats(tally.since_start),
        "answered_before_run_returned": tally.before_return,
        "never_answered": tally.not_answered,
        "disturbed_by_daemon_restart": tally.disturbed,
        "forbidden_probes": forbidden_probes,
        "forbidden_probes_answered": forbidden_ok,
        "forbidden_frames_received": len(frames),
        "forbidden_frames": [(round(t, 4), src, proto, flags) for t, src, proto, flags in frames[:50]],
        "forbidden_answers": answers,
        "frame_witness_error": witness.error,
        "allowed_probes": allowed_probes,
        "positive_control": control,
        "mode_switch": switches,
        "signed_since_return_ms": stats(tally.signed),
        "since_container_started_ms": stats(tally.since_started_at),
        "raw_since_return_ms": tally.since_return,
        "raw_since_start_ms": tally.since_start,
        "method": __doc__.strip(),
    }
