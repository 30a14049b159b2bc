"""The report's part for the targets of issues 12 (policy as data), 13 (eBPF
backend) and 14 (audit mode): each target next to the figure of this run,
the four datapaths side by side, the rule sweep as the CLI and as the
nftables backend alone see it."""
from __future__ import annotations

import statistics

from .fmt import get, med, mmm, num, ratio, scale_rules, stats_of


def _le(x, limit) -> str:
    return "n/a" if x is None or limit is None else ("met" if x <= limit else "**not met**")


def _ge(x, limit) -> str:
    return "n/a" if x is None or limit is None else ("met" if x >= limit else "**not met**")


def _div(a, b):
    return None if a is None or not b else a / b


def _per_round(a: list, b: list) -> list:
    """a/b round by round (both measured in every round, in the same order)."""
    return [x / y for x, y in zip(a or [], b or []) if x is not None and y]


def _judged(rounds: list, a, b, unit: str, digits: int, limit: float, test, kind: str = "interleaved") -> tuple:
    """(text, verdict) of a target ``a/b`` vs ``limit``: judged on the median of the interleaved
    rounds' ratios when the run has them, with their range and the ratio of the medians beside
    it; else on the ratio of the medians. The verdict names the statistic it used."""
    medians = f"medians {num(a, digits)} / {num(b, digits)} {unit} = {ratio(a, b)}"
    if not rounds:
        return medians, f"{test(_div(a, b), limit)} (ratio of medians)"
    x = med(stats_of(rounds))
    return (f"{num(x, 2)}× (median of {len(rounds)} {kind} rounds' ratios, {min(rounds):.2f}–"
            f"{max(rounds):.2f}×); {medians}", f"{test(x, limit)} (median of the rounds' ratios)")


def _per_cpu(ab: dict, a: str, b: str) -> str:
    """'; per CPU-second X× (lo–hi×)': the median of the rounds' ratios of Gbit per CPU-second
    of iperf3 (``dataplane.iperf_run``), which the machine's other load moves far less than
    Gbit/s: context for the verdict, not the target's figure."""
    x = sorted(_per_round(get(ab, a, "per_cpu_s"), get(ab, b, "per_cpu_s")))
    if not x:
        return ""
    return f"; Gbit per CPU-second of iperf3 {num(med(stats_of(x)), 2)}× ({x[0]:.2f}–{x[-1]:.2f}×)"


def _rules_rows(r) -> list:
    sc, be = get(r, "dataplane", "scale") or {}, get(r, "datapath", "nft_backend") or {}
    sw = sc.get("sweep") or {}
    top = str(scale_rules(r))
    # the status timed next to the edits at ``top`` rules (runs before 2026-11-30 10:00: once, before the sweep)
    status = med(get(sw, top, "status_ms")) or med(sc.get("cli_status_ms"))
    ps, bps = med(get(sw, top, "policy_set_ms")), get(be, top, "policy_set_0_to_N")
    add, rm = med(get(sw, top, "one_rule_add_ms")), med(get(sw, top, "one_rule_remove_ms"))
    badd, brm = get(be, top, "one_rule_add"), get(be, top, "one_rule_remove")
    hd = get(r, "datapath", "handler") or {}
    hadd, hrm, hps = (med(hd.get(k)) for k in ("one_rule_add_ms", "one_rule_remove_ms", "policy_set_ms"))
    rows = [(f"#12 `secnet policy set` of {int(top):,} rules ≤ 100 ms", f"CLI {num(ps, 0)} ms; daemon's handler "
             f"{num(hps, 0)} ms; nft backend alone {num(bps)} ms",
             f"{_le(ps, 100)} (CLI); {_le(hps, 100)} (daemon); {_le(bps, 100)} (backend)"),
            (f"#12 one rule add / remove at {int(top):,}: ≤ 10 ms in the daemon (p50)",
             f"daemon's handler (`bench.handler`) {num(hadd)} / {num(hrm)} ms; nft backend alone "
             f"{num(badd)} / {num(brm)} ms", f"{_le(hadd, 10)} / {_le(hrm, 10)} (daemon)"),
            (f"#12 one rule add / remove at {int(top):,}: CLI round trip ≤ 1.2× empty `secnet status`",
             f"{num(add, 0)} / {num(rm, 0)} ms vs status {num(status, 0)} ms: {ratio(add, status)} / "
             f"{ratio(rm, status)}", f"{_le(_div(add, status), 1.2)} / {_le(_div(rm, status), 1.2)}")]
    mx = sc.get("joins_at_max_rules") or {}
    new, known = med(get(mx, "new_segment", "join_ms")), med(get(mx, "existing_segment", "join_ms"))
    rows.append((f"#12 join bringing a new segment ≤ 1.2× join into a known one, at {mx.get('rules', 0):,} rules",
                 f"{num(new)} / {num(known)} ms = {ratio(new, known)}", _le(_div(new, known), 1.2)))
    for what, marks in (("median of 5", get(sc, "joins", "marks")), ("median of 21 around each",
                                                                        get(sc, "joins", "marks_wide"))):
        if marks:
            keys = sorted(marks, key=int)
            a, z = med(marks[keys[0]]), med(marks[keys[-1]])
            rows.append((f"#12 {int(keys[-1]):,}th join ≤ 1.1× the 1st ({what})",
                         f"{num(z)} / {num(a)} ms = {ratio(z, a)}", _le(_div(z, a), 1.1)))
    return rows


def _scale_row(r, g, eps, rules) -> tuple:
    """Issue 12's scale throughput: the median of the per-round ratios of the interleaved A/B
    (``dataplane.ab``) when the run has one, else the ratio of the data-plane rounds' medians."""
    what = f"#12 throughput with {eps:,} endpoints + {rules:,} rules ≥ 0.98× without"
    plain = f"{num(g('secnet-scale'), 2)} / {num(g('secnet'), 2)} Gbit/s = {ratio(g('secnet-scale'), g('secnet'))}"
    ab = get(r, "dataplane", "scale_ab") or {}
    x = get(ab, "secnet-scale", "ratio")
    if not x:
        return what, plain, f'{_ge(_div(g("secnet-scale"), g("secnet")), 0.98)} (ratio of medians)'
    raw, ref = get(ab, "secnet-scale", "raw") or [], get(ab, "secnet-policy", "raw") or []
    to_policy = statistics.median([a / b for a, b in zip(raw, ref) if b] or [float("nan")])
    text = (f"{num(med(x), 2)}× (median of {x['n']} interleaved rounds' ratios, {num(x['min'], 2)}–"
            f"{num(x['max'], 2)}×; medians {num(med(get(ab, 'secnet-scale', 'gbps')), 2)} / "
            f"{num(med(get(ab, 'secnet', 'gbps')), 2)} Gbit/s); against the same flow and rules on a network "
            f"without the endpoints and rules (secnet-policy) {num(to_policy, 2)}×; the data-plane rounds: {plain}")
    return what, text, f"{_ge(med(x), 0.98)} (median of the rounds' ratios)"


def _load_rows(r) -> list:
    dp, sc = get(r, "dataplane", "configs") or {}, get(r, "dataplane", "scale") or {}
    g = lambda n: med(get(dp, n, "gbps"))
    eps, rules = get(r, "sizes", "endpoints"), scale_rules(r)
    ab = get(r, "dataplane", "scale_ab") or {}
    rows = [_scale_row(r, g, eps, rules)]
    for name, label in (("secnet", "no rules"), ("secnet-policy", "allowing policy")):
        a, b = get(ab, name, "gbps"), get(ab, "bridge", "gbps")
        text, verdict = (_judged(_per_round(get(ab, name, "raw"), get(ab, "bridge", "raw")), med(a), med(b),
                                 "Gbit/s", 2, 1.0, _ge) if b else
                         _judged([], g(name), g("bridge"), "Gbit/s (data-plane rounds)", 2, 1.0, _ge))
        rows.append((f"#12 container→container throughput ≥ 1.0× Docker's bridge (secnet {label})",
                     text + _per_cpu(ab, name, "bridge"), verdict))
    mem = get(r, "memory") or {}
    if mem.get("rules_set"):   # the target's own scenario: a private daemon, no rule sweep before it
        at, start, after = (get(mem, k, "rss_mib") for k in ("rules_set", "start", "network_out"))
        rows.append((f"#12 daemon RSS ≤ 80 MB at {mem['endpoints']:,} endpoints + {mem['rules']:,} rules; "
                     "back near start after (private daemon, no sweep: bench/memory.py)",
                     f"{num(at)} MiB (start {num(start)}, {mem['endpoints']:,} endpoints "
                     f"{num(get(mem, 'endpoints_in', 'rss_mib'))}, all removed {num(after)}; "
                     f"Pss sum {num(get(mem, 'rules_set', 'pss_mib'))} MiB; each shared page once "
                     f"{num(get(mem, 'rules_set', 'union_rss_mib'))} MiB)", _le(at, 80 / 1.048576)))
    rss = sc.get("rss_mib") or {}
    if rss:
        top = max(rss, key=int)
        # the endpoints grow under the flow's 2 rules; the figure with 10,000 rules is read after the sweep
        loaded = get(r, "dataplane", "idle_at_scale", "rss_mib") or rss[top]
        at, after, start = med(loaded), med(sc.get("rss_after_removal_mib")), med(rss.get("0"))
        pss = med(loaded.get("pss_mib") or {})
        rows.append((f"#12 daemon RSS ≤ 80 MB at {int(top):,} endpoints + {rules:,} rules, after the sweep's "
                     "50,000-rule edits (shared daemon); endpoints removed",
                     f"{num(at)} MiB (start {num(start)}, endpoints removed {num(after)}; Pss sum {num(pss)} MiB)",
                     _le(at, 80 / 1.048576)))
    idle = get(r, "dataplane", "idle_at_scale", "percent_of_one_core")
    rows.append(("#12 idle CPU < 0.5 % of a core with that load", f"{num(idle, 2)} %", _le(idle, 0.5)))
    cp = get(r, "control") or {}
    s, b = med(get(cp, "run", "secnet", "answered")), med(get(cp, "run", "bridge", "answered"))
    text, verdict = _judged(get(cp, "run", "round_ratios", "answered", "raw"), s, b, "ms", 0, 1.03, _le)
    rows.append(("#12 `docker run -d` until the network answers ≤ 1.03× bridge (p50)", text, verdict))
    s = med(get(cp, "network", "secnet", "create", "stats"))
    b = med(get(cp, "network", "bridge", "create", "stats"))
    text, verdict = _judged(get(cp, "network", "round_ratios", "create", "raw"), s, b, "ms", 0, 1.0, _le)
    rows.append(("#12 `docker network create` ≤ 1.0× bridge", text, verdict))
    return rows


def _ebpf_rows(r) -> list:
    dp, ns = get(r, "dataplane", "configs") or {}, get(r, "datapath", "throughput") or {}
    rows = []
    for where, d, veth, ebpf, key in (("Docker", dp, "veth", "secnet-ebpf", "rtt_ms"),
                                      ("Docker, a bare veth between the same containers", dp, "veth-containers",
                                       "secnet-ebpf", "rtt_ms"),
                                      ("namespaces", ns, "veth", "ebpf", "rtt_us")):
        if veth not in d:
            continue
        for what, k, unit, digits, limit, test in (("throughput with policy", "gbps", "Gbit/s", 2, 0.95, _ge),
                                                   ("RTT (ping, cold)", key, "", 0, 1.1, _le),
                                                   ("request/response RTT (sockperf, hot)", "rr_us", "µs", 1, 1.1,
                                                    _le)):
            a, b = med(get(d, ebpf, k)), med(get(d, veth, k))
            if a is None or b is None:
                continue
            scale = 1000 if k == "rtt_ms" else 1
            text, verdict = _judged(_round_ratios(d, ebpf, veth, k), a * scale, b * scale, unit or "µs", digits,
                                    limit, test, "interleaved" if d is ns else "round-robin")
            if d is ns and k == "gbps":   # Gbit per CPU-second of iperf3: context, far steadier under load
                x = sorted(_round_ratios(ns, ebpf, veth, "per_cpu_s"))
                text += f"; Gbit per CPU-second of iperf3 {num(statistics.median(x), 2)}× ({x[0]:.2f}–{x[-1]:.2f}×)" if x else ""
            sign = "≥" if test is _ge else "≤"
            rows.append((f"#13 eBPF {what} {sign} {limit}× bare veth ({where})", text, verdict))
    if "floor" in ns:    # what any program on the host side of a veth pays for the hop (no target)
        parts = []
        for what, k in (("Gbit/s", "gbps"), ("ping", "rtt_us"), ("request/response", "rr_us")):
            x = sorted(_round_ratios(ns, "floor", "veth", k))
            parts.append(f"{what} {num(statistics.median(x), 2)}× ({x[0]:.2f}–{x[-1]:.2f}×)" if x else f"{what} —")
        rows.append(("#13 (floor) a tc program that only redirects / bare veth (namespaces; medians of the "
                     "per-round ratios)", ", ".join(parts), "—"))
    many = [k for k in ns if k.startswith("ebpf+") and k[5:].isdigit()]   # ebpf+N: N more rules
    if many:
        rows.append(_many_rules_row(r, ns, many[0]))
    en = get(r, "enforce") or {}
    frames = en.get("forbidden_frames_received")
    rows.append(("#13 forbidden packets through during container starts: 0 (nftables network; frames "
                 "from a new container at the evil peer's eth0, and its sockets' answers)",
                 f"{frames} frames; {en.get('forbidden_probes_answered')} socket answers of "
                 f"{en.get('forbidden_probes')} probes",
                 "n/a" if not en or frames is None else "met" if frames == 0 else "**not met**"))
    ms = en.get("mode_switch") or {}
    for m in ("audit", "enforce"):
        rows.append((f"#14 `secnet mode NET {m}`: in force when the command returns (p50 of the time after)",
                     f"p50 {num(med(ms.get(f'to_{m}_ms')), 1)} ms, max {num(get(ms, f'to_{m}_ms', 'max'), 1)} ms "
                     f"(command {num(med(ms.get(f'to_{m}_cmd_ms')), 0)} ms; not in force: "
                     f"{ms.get(f'to_{m}_not_in_force')})", "—"))
    return rows


def _round_ratios(d, a, b, key) -> list:
    """The ratios a/b of ``key`` round by round: only rounds both pairs ran (``raw.round``,
    bench.ebpf_datapath; without it, position by position: bench.dataplane's repeats), so a
    ratio within a round is free of the load's drift between rounds."""
    xa, xb = get(d, a, "raw", key) or [], get(d, b, "raw", key) or []
    ra, rb = get(d, a, "raw", "round") or range(len(xa)), get(d, b, "raw", "round") or range(len(xb))
    by_round = dict(zip(rb, xb))
    return [x / by_round[i] for i, x in zip(ra, xa) if x is not None and by_round.get(i)]


def _many_rules_row(r, ns, many) -> tuple:
    """Throughput with N more rules against without: judged on the median of the per-round
    ratios of the pair's interleaved A/B (``datapath.ab``: the two pairs alone, back to back)
    when the run has one, else of the round-robin rounds (one run's medians spread 0.6-1.6x
    round to round on this VM); the ratio of the medians and the program's ns per run under
    iperf3 of both pairs beside it."""
    ab = get(r, "datapath", "ab") or {}
    if get(ab, many, "raw"):
        where, rounds = "interleaved A/B", _per_round(get(ab, many, "raw"), get(ab, "ebpf", "raw"))
        g, b = med(get(ab, many, "gbps")), med(get(ab, "ebpf", "gbps"))
    else:
        where, rounds = "interleaved rounds", _round_ratios(ns, many, "ebpf", "gbps")
        g, b = med(get(ns, many, "gbps")), med(get(ns, "ebpf", "gbps"))
    text, verdict = _judged(rounds, g, b, "Gbit/s", 2, 0.98, _ge, where.split()[0])
    text += _per_cpu(ab, many, "ebpf")
    prof = get(r, "datapath", "ebpf_profile") or {}
    runs = (prof.get("from_container ns/run, iperf3"), prof.get(f"{many} from_container ns/run, iperf3"))
    return (f"#13 eBPF throughput with {many[5:]} more rules ≥ 0.98× without (namespaces, {where})",
            f"{text}; program {runs[1]} / {runs[0]} ns per run", verdict)


def _side_by_side(r) -> list:
    dp, ns = get(r, "dataplane", "configs") or {}, get(r, "datapath", "throughput") or {}
    out = ["### Four datapaths side by side (one run)", "",
           "| | Docker containers: Gbit/s | RTT µs | request/response µs | namespaces on a bridge: Gbit/s "
           "| RTT µs | request/response µs |",
           "|---|---|---|---|---|---|---|"]
    for label, a, b in (("bare veth pair", "veth", "veth"),
                        ("bare veth pair between two containers (Docker: the eBPF pair's; namespaces: Docker's "
                         "embedded-DNS NAT table in both ends, conntrack on)", "veth-containers", "veth+dockernat"),
                        ("Linux bridge (Docker's bridge driver)", "bridge", "bridge"),
                        ("secnet nftables backend, allowing policy", "secnet-policy", "nftables"),
                        ("secnet eBPF backend, allowing policy", "secnet-ebpf", "ebpf"),
                        ("secnet eBPF backend, Docker's embedded-DNS NAT table in both ends", None, "ebpf+dockernat"),
                        (f"secnet nftables, {get(r, 'sizes', 'endpoints', default=0):,} endpoints + "
                         f"{scale_rules(r):,} rules", "secnet-scale", None),
                        (f"secnet eBPF, + {scale_rules(r):,} rules", None, f"ebpf+{scale_rules(r)}"),
                        ("floor: a tc program that only redirects (bench/bpf/redirect_floor.c)", None, "floor")):
        if a not in dp and b not in ns:
            continue
        out.append(f"| {label} | {mmm(get(dp, a, 'gbps'), 2) if a in dp else '—'} | "
                   f"{mmm(get(dp, a, 'rtt_ms'), 0, 1000) if a in dp else '—'} | "
                   f"{mmm(get(dp, a, 'rr_us'), 1) if get(dp, a, 'rr_us') else '—'} | "
                   f"{mmm(get(ns, b, 'gbps'), 2) if b in ns else '—'} | {mmm(get(ns, b, 'rtt_us'), 0) if b in ns else '—'} | "
                   f"{mmm(get(ns, b, 'rr_us'), 1) if get(ns, b, 'rr_us') else '—'} |")
    out += ["", "Docker: the repeats of bench.dataplane (round-robin); namespaces: bench.ebpf_datapath's "
            "interleaved rounds, the same CPU pinning on every pair (iperf3 client on the first CPU, server on "
            "the last; ping on the first); ratios to the bare veth: the targets' rows above (medians of the "
            "per-round ratios).", "",
            "RTT: ping -i 0.01 (cold: every echo after 10 ms idle); request/response: sockperf "
            "ping-pong --tcp, 64 bytes back to back (hot), median round trip, client and server on one CPU "
            "(a cross-CPU wake-up of this VM's idle vCPU costs ~40 µs per round trip and swamps the path)."]
    profile = get(r, "datapath", "ebpf_profile") or {}
    if profile:   # bench.ebpf_datapath --profile
        out += ["", "eBPF pair, where the time goes: " + "; ".join(f"{k} {v}" for k, v in profile.items())]
    return out + [""]


def _sweep(r) -> list:
    sw, be = get(r, "dataplane", "scale", "sweep") or {}, get(r, "datapath", "nft_backend") or {}
    ns = sorted({int(n) for n in list(sw) + list(be) if n != "0"})
    out = ["### Rule sweep", "", "CLI: `secnet policy snbench-scale set|add|remove` through the daemon "
           "(median, min–max); backend: `bench.nft_datapath`, the nftables backend's calls alone (one run).", "",
           "| N rules | CLI policy set, ms | CLI add 1, ms | CLI remove 1, ms | CLI status (next to them), ms | "
           "backend: policy set 0→N | add 1 | remove 1 | join | mode switch | apply_network | drift() | RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in ns:
        p, b = sw.get(str(n), {}), be.get(str(n), {})
        out.append(f"| {n:,} | {mmm(p.get('policy_set_ms'), 0)} | {mmm(p.get('one_rule_add_ms'), 0)} | "
                   f"{mmm(p.get('one_rule_remove_ms'), 0)} | {mmm(p.get('status_ms'), 0)} | " + " | ".join(
                       num(b.get(k)) for k in ("policy_set_0_to_N", "one_rule_add", "one_rule_remove", "join",
                                               "mode_switch", "apply_network_N", "drift_unchanged", "maxrss_mb")) + " |")
    return out + [""]


def lines(r: dict) -> list:
    rows = _rules_rows(r) + _load_rows(r) + _ebpf_rows(r)
    out = [f"## Targets of issues 12, 13 and 14 ({get(r, 'machine', 'date')})", "",
           "| target | this run | verdict |", "|---|---|---|"]
    out += [f"| {t} | {v} | {m} |" for t, v, m in rows] + [""]
    return out + _side_by_side(r) + _sweep(r)
