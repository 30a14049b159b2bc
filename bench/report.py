"""The benchmark report: Markdown, PNG plots (matplotlib, Agg) and the README snippet.

Reads only the results dict that ``run.py`` saved as JSON, so a report can be
remade from a JSON file: ``python -m bench.report bench/results/DATE.json``.
"""
from __future__ import annotations

import json
import os
import sys

from .enforce import forbidden_answer_lines
from .fmt import get, med, mmm, num, ratio, scale_rules, stats_of, vs, vs_rounds
from .plots import PLOTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- headline numbers ----------------------------------------------------------------

def headline(r: dict) -> list:
    """(what, value, detail) rows; every value computed from medians."""
    rows = []
    cp = get(r, "control")
    if cp and "error" not in cp:
        s, b = med(get(cp, "run", "secnet", "answered")), med(get(cp, "run", "bridge", "answered"))
        rows.append(("Start-up (`docker run -d` until the network answers), secnet / bridge",
                     *vs(get(cp, "run", "round_ratios", "answered", "stats"), s, b, "ms (p50)", 0)))
        s, b = med(get(cp, "network", "secnet", "create", "stats")), med(get(cp, "network", "bridge", "create", "stats"))
        rows.append(("`docker network create`, secnet / bridge",
                     *vs(get(cp, "network", "round_ratios", "create", "stats"), s, b, "ms", 0)))
    dp = get(r, "dataplane", "configs")
    if dp:
        g = lambda n: med(get(dp, n, "gbps"))
        ab = get(r, "dataplane", "scale_ab") or {}
        rows.append(("Throughput, secnet / bridge", *vs_rounds(ab, "secnet", "bridge", g("secnet"), g("bridge"))))
        rows.append(("Throughput, secnet / bare veth", ratio(g("secnet"), g("veth")),
                     f"{num(g('secnet'))} / {num(g('veth'))} Gbit/s"))
        rows.append(("Throughput, secnet with an allowing policy / bridge",
                     *vs_rounds(ab, "secnet-policy", "bridge", g("secnet-policy"), g("bridge"))))
        rules = scale_rules(r)
        eps = get(r, "sizes", "endpoints")
        ab = get(r, "dataplane", "scale_ab", "secnet-scale", "ratio")   # dataplane.ab: interleaved rounds
        rows.append((f"Throughput with {eps:,} endpoints + {rules:,} rules / without rules",
                     f"{num(med(ab), 2)}×" if ab else ratio(g("secnet-scale"), g("secnet")),
                     (f"median of {ab['n']} interleaved rounds' ratios ({num(ab['min'], 2)}–{num(ab['max'], 2)}×); "
                      if ab else "") + f"{num(g('secnet-scale'))} / {num(g('secnet'))} Gbit/s"))
    sc = get(r, "dataplane", "scale")
    marks = get(sc, "joins", "marks")
    if marks:
        keys = sorted(marks, key=int)
        a, z = med(marks[keys[0]]), med(marks[keys[-1]])
        rows.append((f"Join latency, {int(keys[-1]):,}th / 1st", ratio(z, a), f"{num(z)} ms / {num(a)} ms"))
    en = get(r, "enforce")
    if en and "error" not in en:
        rows.append(("Time to enforce, p99 (from `docker run -d` returning)",
                     f"{num(get(en, 'since_run_returned_ms', 'p99'), 0)} ms",
                     f"{get(en, 'answered_before_run_returned')}/{get(en, 'runs')} runs answered before "
                     f"`docker run` returned; p99 from the container's start "
                     f"{num(get(en, 'since_container_started_ms', 'p99'), 0)} ms"))
        rows.append(("Forbidden packets that got through", f"{get(en, 'forbidden_frames_received')} frames",
                     f"at the evil peer's eth0 during {get(en, 'runs')} starts; its sockets: "
                     f"{get(en, 'forbidden_probes_answered')} answers of {get(en, 'forbidden_probes'):,} probes"))
    idle = get(r, "idle")
    if idle and "error" not in idle:
        rows.append(("Daemon CPU while idle", f"{num(idle.get('percent_of_one_core'), 2)} % of a core",
                     f"over {num(idle.get('covered_seconds'), 0)} s, /proc/<pid>/stat utime+stime"))
    rss = get(sc, "rss_mib")
    if rss:
        top = max(rss, key=int)
        rows.append((f"Daemon RSS at {int(top):,} endpoints", f"{num(med(rss[top]))} MiB",
                     f"{num(med(rss.get('0')))} MiB with none"))
    ipt = get(r, "iptables", "iptables", "points")
    if ipt:
        top = max(ipt, key=int)
        g0, gt = med(get(ipt, "0", "dataplane", "gbps")), med(get(ipt, top, "dataplane", "gbps"))
        rows.append((f"Throughput, bridge + {int(top):,} DOCKER-USER pair rules / bridge + none",
                     ratio(gt, g0), f"{num(gt)} / {num(g0)} Gbit/s"))
        d = med(get(ipt, top, "delete_ms"))
        ps = med(get(sc, "sweep", top, "policy_set_ms"))
        ne = med(get(r, "iptables", "nft_elements", top, "add_ms"))
        rows.append((f"Rule update at {int(top):,}: `iptables -D` / secnet join (nft element add)",
                     ratio(d, ne, 1), f"{num(d)} ms / {num(ne)} ms; `secnet policy set` of all "
                     f"{int(top):,} rules: {num(ps, 0)} ms"))
    return rows


def headline_text(r: dict) -> str:
    lines = ["", "Headline numbers (medians):"]
    for what, value, detail in headline(r):
        lines.append(f"  {what.replace('`', '')}: {value}   [{detail.replace('`', '')}]")
    return "\n".join(lines)


# --- markdown ------------------------------------------------------------------------

def _machine(r) -> list:
    m = r.get("machine", {})
    return [
        "| | |", "|---|---|",
        f"| CPU | {m.get('cores')} cores, {m.get('cpu')} |",
        f"| memory | {m.get('memory_gib')} GiB |",
        f"| OS, kernel | {m.get('os')}, {m.get('kernel')} |",
        f"| Docker engine | {m.get('engine')} (CLI {m.get('docker_cli')}) |",
        f"| tools | {m.get('iperf3')}; {m.get('nft')}; {m.get('iptables')}; Python {m.get('python')}; "
        f"matplotlib {m.get('matplotlib')} |",
        f"| secnet | commit {m.get('secnet_commit')} |",
        f"| run | started {m.get('started')}, {num(r.get('total_seconds'), 0)} s in all |",
    ]


def _noise(r) -> list:
    a, z = r.get("busy_at_start", {}), r.get("busy_at_end", {})
    restarts = get(r, "daemon_restarts_by_others", "by_section") or {}
    total = sum(restarts.values())
    lines = [
        "**Noise.** This machine was shared with other engineers' test runs while the benchmark "
        "ran, so absolute numbers are noisy; compare within this run only.",
        f"At the start {a.get('pytest_processes')} pytest processes, {a.get('containers_other')} other "
        f"containers and {a.get('networks_other')} other networks existed (load {' '.join(a.get('loadavg', []))}); "
        f"at the end {z.get('pytest_processes')}, {z.get('containers_other')} and {z.get('networks_other')} "
        f"(load {' '.join(z.get('loadavg', []))}).",
    ]
    if total:
        per = ", ".join(f"{k}: {v}" for k, v in restarts.items())
        lines.append(f"The secnet daemon (one daemon for everybody) was restarted by others {total} times "
                     f"during the run ({per}). Requests that hit a restart were sent again and left out "
                     "of the statistics; the idle-CPU windows count only seconds without a restart.")
    else:
        lines.append("Nobody restarted the secnet daemon during the run.")
    waited = r.get("waited_for_others_s") or {}
    if waited:
        lines.append("The benchmark waited for others' whole-machine tests (the managed-plugin tests stop "
                     "the shared daemon and remove every secnet network) before: "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in waited.items()) + ".")
    retried = {k: v["first_attempt_error"] for k, v in r.items()
               if isinstance(v, dict) and v.get("first_attempt_error")}
    for k, v in retried.items():
        lines.append(f"Section {k} failed once (`{v[:200]}`) and was run again; its numbers are from "
                     "the second attempt.")
    return [" ".join(lines)]


def _control(r) -> list:
    cp = get(r, "control")
    if not cp:
        return []
    if "error" in cp:
        return ["## 1. Control plane", "", f"Failed: `{cp['error']}`", ""]
    out = ["## 1. Control plane", "", cp.get("method", ""), "",
           "| ms | secnet p50 | secnet p95 | bridge p50 | bridge p95 | secnet / bridge (p50) | median of the "
           "rounds' ratios (min–max) | runs |", "|---|---|---|---|---|---|---|---|"]
    rows = [("`docker network create`", lambda d: get(cp, "network", d, "create", "stats"), ("network", "create")),
            ("`docker network rm`", lambda d: get(cp, "network", d, "rm", "stats"), ("network", "rm")),
            ("`docker run -d` returns", lambda d: get(cp, "run", d, "run_returned"), ("run", "returned")),
            ("`docker run -d` until the network answers", lambda d: get(cp, "run", d, "answered"), ("run", "answered"))]
    for label, fn, (sec, key) in rows:
        s, b = fn("secnet") or {}, fn("bridge") or {}
        x = mmm(get(cp, sec, "round_ratios", key, "stats"), 2)
        out.append(f"| {label} | {num(s.get('median'))} | {num(s.get('p95'))} | {num(b.get('median'))} | "
                   f"{num(b.get('p95'))} | {ratio(s.get('median'), b.get('median'))} | {x} | "
                   f"{s.get('n')} / {b.get('n')} |")
    gap = {}
    for d in ("secnet", "bridge"):
        raw = get(cp, "run", d, "raw") or {}
        gap[d] = stats_of([a - b for a, b in zip(raw.get("answered_ms", []), raw.get("run_returned_ms", []))])
    if gap["secnet"] and gap["bridge"]:
        out.append(f"| of that: after `docker run -d` returned | {num(med(gap['secnet']), 2)} | "
                   f"{num(gap['secnet'].get('p95'), 2)} | {num(med(gap['bridge']), 2)} | "
                   f"{num(gap['bridge'].get('p95'), 2)} | {ratio(med(gap['secnet']), med(gap['bridge']))} | | |")
    dist = [get(cp, "run", d, "disturbed") or 0 for d in ("secnet", "bridge")]
    dist_n = [get(cp, "network", d, "disturbed") or 0 for d in ("secnet", "bridge")]
    if any(dist) or any(dist_n):
        out.append(f"\nSamples left out because the daemon was restarted under them: network create/rm "
                   f"{dist_n[0]} / {dist_n[1]}, run {dist[0]} / {dist[1]} (secnet / bridge).")
    nev = [get(cp, "run", d, "never_answered") for d in ("secnet", "bridge")]
    if any(nev):
        out.append(f"\nContainers that never answered within 10 s: secnet {nev[0]}, bridge {nev[1]}.")
    return out + [""]


def _enforce(r) -> list:
    en = get(r, "enforce")
    if not en:
        return []
    if "error" in en:
        return ["## 2. Time to enforce", "", f"Failed: `{en['error']}`", ""]
    pc = en.get("positive_control") or {}
    return [
        "## 2. Time to enforce", "", en.get("method", ""), "",
        "| ms | p50 | p99 | min | max |", "|---|---|---|---|---|",
        *(f"| {label} | {num(s.get('median'))} | {num(s.get('p99'))} | {num(s.get('min'))} | {num(s.get('max'))} |"
          for label, s in (("from `docker run -d` returning (0 when it answered earlier)", en["since_run_returned_ms"]),
                           ("same, signed (negative: answered before `docker run` returned)", en["signed_since_return_ms"]),
                           ("from the container's start (engine's `State.StartedAt`)", en["since_container_started_ms"]),
                           ("from the start of `docker run -d`", en["since_run_started_ms"]))),
        "",
        f"- Runs: {en['runs']}; the allowed peer answered before `docker run -d` returned in "
        f"{en['answered_before_run_returned']} of them; never answered (5 s): {en['never_answered']}.",
        f"- **Frames from a new container's address that reached the evil peer: {en.get('forbidden_frames_received')}"
        f"**; its sockets' answers: {en['forbidden_probes_answered']} of {en['forbidden_probes']:,} (peer in "
        f"segment `evil`, probing each new container from before `docker run` until its removal).",
        *forbidden_answer_lines(en),
        f"- Positive control: after `secnet policy add {pc.get('rule_added')}` the same prober got "
        f"{pc.get('answers')} answers of {pc.get('probes')} probes for one more container "
        f"(first after {num(pc.get('first_answer_ms_after_run_start'))} ms), so the probe does see "
        "answers when policy allows them.", ""]


def _dataplane(r) -> list:
    d = get(r, "dataplane")
    if not d:
        return []
    out = ["## 3. Data plane", "", d.get("method", ""), ""]
    if "error" in d:
        out += [f"Failed: `{d['error']}`", ""]
    dp = d.get("configs")
    if dp:
        sz = r.get("sizes", {})
        out += [f"iperf3 -t {sz.get('iperf_secs')}, ping -c 50 -i 0.01 and sockperf ping-pong --tcp (64 bytes "
                f"back to back), {sz.get('dp_repeats')} repeats each; median (min–max) of the repeats (RTT: each "
                "repeat's median of 50, cold; request/response: the median round trip, hot, client and "
                "server on one CPU).", "",
                "| configuration | Gbit/s | RTT µs | request/response µs | throughput / bridge | / veth |",
                "|---|---|---|---|---|---|"]
        labels = {"veth": "bare veth pair (ceiling)", "bridge": "Docker bridge driver",
                  "veth-containers": "bare veth pair between the eBPF pair's two containers",
                  "secnet": "secnet, no rules", "secnet-policy": "secnet, policy allows the flow",
                  "secnet-ebpf": "secnet eBPF backend, policy allows the flow",
                  "secnet-scale": f"secnet, {sz.get('endpoints', 0):,} endpoints + "
                                  f"{scale_rules(r):,} rules"}
        g = lambda n: med(get(dp, n, "gbps"))
        for n in ("veth", "veth-containers", "bridge", "secnet", "secnet-policy", "secnet-ebpf",
                  "secnet-scale"):
            if n in dp:
                out.append(f"| {labels[n]} | {mmm(dp[n]['gbps'], 2)} | {mmm(dp[n]['rtt_ms'], 0, 1000)} | "
                           f"{mmm(dp[n].get('rr_us'), 1)} | {ratio(g(n), g('bridge'))} | {ratio(g(n), g('veth'))} |")
        out.append("")
    return out


def _scale(r) -> list:
    sc = get(r, "dataplane", "scale")
    if not sc:
        return []
    out = ["## 4. Scale", "", sc.get("method", ""), ""]
    j = sc.get("joins")
    if j:
        wide = j.get("marks_wide") or {}
        out += ["| join | ms, median (min–max) of 5 | joins used | median (min–max) of 21 | joins used |",
                "|---|---|---|---|---|"]
        for m in sorted(j["marks"], key=int):
            w, v = j["marks"][m]["window"], (wide.get(m) or {}).get("window")
            out.append(f"| {int(m):,} | {mmm(j['marks'][m])} | {w[0]:,}–{w[1]:,} | "
                       + (f"{mmm(wide[m])} | {v[0]:,}–{v[1]:,} |" if v else "– | – |"))
        out += ["", f"All {j['count']:,} joins: CreateEndpoint {mmm(j['create_endpoint_ms'])} ms, Join "
                f"{mmm(j['join_ms'])} ms, both {mmm(j['total_ms'])} ms (p95 {num(j['total_ms'].get('p95'))}); "
                f"{num(j['seconds_total'])} s in all."
                + (f" {len(j['disturbed_by_daemon_restart'])} joins hit a daemon restart and are left out."
                   if j.get("disturbed_by_daemon_restart") else ""), ""]
    mx = sc.get("joins_at_max_rules")
    if mx:
        out += [f"With {mx['rules']:,} rules in place and {mx['endpoints']:,} endpoints, five more joins "
                f"(then leaves): into an existing segment {mmm(get(mx, 'existing_segment', 'join_ms'))} ms "
                f"(leave {mmm(get(mx, 'existing_segment', 'leave_ms'))} ms); into a new segment (a new "
                f"identity and its policy-map entries, as element deltas), {mmm(get(mx, 'new_segment', 'join_ms'))} ms.", ""]
    if sc.get("leaves"):
        lv = sc["leaves"]
        out += [f"Leave + DeleteEndpoint of all {lv['count']:,}: {mmm(lv['total_ms'])} ms each.", ""]
    rss = sc.get("rss_mib")
    if rss:
        out += ["| endpoints | daemon RSS (VmRSS sum), MiB | daemon Pss (Pss sum), MiB |", "|---|---|---|"]
        out += [f"| {int(k):,} | {mmm(rss[k])} | {mmm(rss[k].get('pss_mib'))} |" for k in sorted(rss, key=int)]
        after = get(sc, "rss_after_removal_mib")
        if after:
            same = after.get("pids") == rss[max(rss, key=int)].get("pids")
            out.append(f"| 0 again (after removing them) | {mmm(after)} | {mmm(after.get('pss_mib'))}"
                       + ("" if same else " — not comparable: someone restarted the daemon meanwhile, so "
                          "this is a fresh process that restored the endpoints from state") + " |")
        out.append("")
    sw = sc.get("sweep")
    if sw:
        out += [f"Rule updates, `secnet policy snbench-scale set` "
                f"with N rules (+ the flow's 2), {get(r, 'sizes', 'update_repeats')} times each, as the CLI "
                f"(a `secnet policy NET` read costs {mmm(sc.get('cli_get_ms'), 0)} ms: the CLI's own start-up); "
                "throughput of the flow at each N:", "",
                "| N rules | `secnet policy set`, ms | Gbit/s | RTT µs |", "|---|---|---|---|"]
        for n in sorted(sw, key=int):
            p = sw[n]
            out.append(f"| {int(n):,} | {mmm(p.get('policy_set_ms'), 0)} | {mmm(get(p, 'dataplane', 'gbps'), 2)} | "
                       f"{mmm(get(p, 'dataplane', 'rtt_ms'), 0, 1000)} |")
        out.append("")
    return out


def _iptables(r) -> list:
    it = get(r, "iptables")
    if not it:
        return []
    out = ["## 5. iptables DOCKER-USER pair rules against secnet", "", it.get("method", ""), ""]
    if "error" in it:
        out += [f"Failed: `{it['error']}`", ""]
    pts = get(it, "iptables", "points") or {}
    nft = it.get("nft_elements") or {}
    sw = get(r, "dataplane", "scale", "sweep") or {}
    ns = sorted(set(pts) | set(nft) | set(sw), key=int)
    if ns:
        out += ["Medians (min–max). Throughput and RTT of the same kind of flow (client to server, "
                "allowed) on each side.", "",
                "| N | iptables `-I` ms | iptables `-D` ms | bridge+iptables Gbit/s | RTT µs | "
                "nft add ms | nft delete ms | `secnet policy set` ms | secnet Gbit/s | RTT µs |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for n in ns:
            p, e, s = pts.get(n, {}), nft.get(n, {}), sw.get(n, {})
            out.append(f"| {int(n):,} | {mmm(p.get('insert_ms'))} | {mmm(p.get('delete_ms'))} | "
                       f"{mmm(get(p, 'dataplane', 'gbps'), 2)} | {mmm(get(p, 'dataplane', 'rtt_ms'), 0, 1000)} | "
                       f"{mmm(e.get('add_ms'))} | {mmm(e.get('delete_ms'))} | {mmm(s.get('policy_set_ms'), 0)} | "
                       f"{mmm(get(s, 'dataplane', 'gbps'), 2)} | {mmm(get(s, 'dataplane', 'rtt_ms'), 0, 1000)} |")
        out.append("")
    ct = get(it, "iptables", "conntrack_first_at_max")
    if ct:
        out += [f"Variant at N = {ct['n']:,} with the conntrack ESTABLISHED,RELATED rule moved to the top: "
                f"{mmm(get(ct, 'dataplane', 'gbps'), 2)} Gbit/s, RTT {mmm(get(ct, 'dataplane', 'rtt_ms'), 0, 1000)} µs "
                "(established packets skip the pair rules; every new connection still walks them, and "
                "updates cost the same).", ""]
    cl = get(it, "iptables", "cleanup")
    if cl:
        out += [f"Clean-up: every added rule removed in {get(it, 'iptables', 'rules_removed_s')} s (errors: "
                f"{len(cl['errors'])}; rules tagged `snbench` left in DOCKER-USER afterwards: "
                f"{cl['tagged_rules_left_after_cleanup']}; DOCKER-USER as before: {cl.get('docker_user_same')}).", ""]
    return out


def _idle(r) -> list:
    out = ["## Daemon CPU while idle", ""]
    for label, d in (("before the benchmark (the daemon holding only others' networks)", get(r, "idle")),
                     (f"with {get(r, 'sizes', 'endpoints', default=0):,} endpoints and "
                      f"{scale_rules(r):,} rules",
                      get(r, "dataplane", "idle_at_scale"))):
        if not d:
            continue
        if "error" in d:
            out.append(f"- {label}: failed: `{d['error']}`")
            continue
        out.append(f"- {label}: **{num(d.get('percent_of_one_core'), 2)} % of one core** over "
                   f"{num(d.get('covered_seconds'), 0)} s ({num(d.get('cpu_seconds'), 2)} s of CPU; per "
                   f"{d.get('slice_seconds')} s slice {mmm(d.get('per_slice_percent'), 2)} %); "
                   f"RSS {mmm(d.get('rss_mib'))} MiB (Pss {mmm((d.get('rss_mib') or {}).get('pss_mib'))} MiB)"
                   + (f"; {d['daemon_restarts_seen']} restarts by others skipped" if d.get("daemon_restarts_seen") else ""))
    out += ["", "utime+stime from /proc/<pid>/stat of the secnet-plugin processes (gunicorn master and "
            "worker), read each second. \"Idle\" means this benchmark sent nothing; others' tests may "
            "have used the shared daemon meanwhile, so this is an upper bound.", ""]
    return out


def _memory(r) -> list:
    """Issue 12's RSS scenario on a private daemon (bench/memory.py)."""
    m = r.get("memory")
    if not isinstance(m, dict):
        return []
    out = ["## Daemon memory: issue 12's scenario (private daemon)", ""]
    if "error" in m:
        return out + [f"failed: `{m['error']}`", ""]
    from .memory import table
    return out + [f"This tree's daemon (gunicorn master + worker) in a namespace of its own, driven through the "
                  f"plugin API: a network, {m['endpoints']:,} endpoints, {m['sets']} `set`s of {m['rules']:,} "
                  "rules, one rule added and removed, then every endpoint and the network removed; no rule "
                  "sweep before (section 4's figure at 10,000 rules comes after its 50,000-rule edits, on the "
                  "shared daemon). After each step and 2 s of quiet, median of 5 readings.", ""] + table(m) + [""]


def _dns(r) -> list:
    """DNS-name rules (bench/dns_hold.py): hold latency and joins with learned addresses."""
    d = r.get("dns")
    if not isinstance(d, dict) or "backends" not in d:
        return []
    from .dns_hold import text
    return ["## DNS-name rules (issue 15)", "", "Target: a held answer costs p50 <= 2 ms, p99 <= 10 ms; "
            "joins with 10,000 learned addresses >= 0.98x of without.", "", "```", text(d), "```", ""]


def write(r: dict, out_dir: str, snippet: bool = True) -> str:
    date = get(r, "machine", "date", default="unknown")
    plots = []
    for name, fn in PLOTS:
        path = os.path.join(out_dir, f"{date}-{name}.png")
        try:
            if fn(r, path):
                plots.append((name, os.path.basename(path)))
        except Exception as exc:  # a missing plot must not cost the report
            print(f"report: plot {name} failed: {exc}", file=sys.stderr)
    lines = [f"# secnet benchmarks, {date}", "",
             "Made by `make bench` (`bench/run.py`): secnet against Docker's bridge driver and a bare veth "
             "pair, on one machine in one go. Every figure is the median of repeats with min and max "
             f"unless it says p95/p99. Raw numbers: [{date}.json]({date}.json).", "",
             "## Machine", "", *_machine(r), "", *_noise(r), "",
             "## Headline", "", "| | value | detail |", "|---|---|---|"]
    lines += [f"| {w} | **{v}** | {d} |" for w, v, d in headline(r)]
    lines.append("")
    for name, file in plots:
        lines.append(f"![{name}]({file})")
    lines.append("")
    from . import targets  # imports this module's helpers
    lines += targets.lines(r)
    lines += _control(r) + _enforce(r) + _dataplane(r) + _scale(r) + _iptables(r) + _idle(r) + _memory(r) + _dns(r)
    errs = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
    if errs or r.get("interrupted"):
        lines += ["## Failures", ""] + [f"- {k}: `{v}`" for k, v in errs.items()]
        if r.get("interrupted"):
            lines.append("- the run was interrupted")
        lines.append("")
    lines += ["## How to run", "", "    make bench                 # everything, ~15 min, writes bench/results/<date>.*",
              "    .venv/bin/python -m bench.run --quick   # small sizes, into .run/bench-quick/",
              "    .venv/bin/python -m bench.report bench/results/<date>.json   # remake the report", ""]
    md = os.path.join(out_dir, f"{date}.md")
    with open(md, "w") as f:
        f.write("\n".join(lines))
    if snippet:
        write_snippet(r, out_dir, dict(plots).get("rules"))
    return md


def write_snippet(r: dict, out_dir: str, plot_file) -> str:
    date = get(r, "machine", "date", default="unknown")
    rel = os.path.relpath(out_dir, REPO)
    m = r.get("machine", {})
    lines = ["## Performance", "",
             f"Measured with `make bench` on {m.get('cores')} cores, kernel {m.get('kernel')}, Docker "
             f"{m.get('engine')} ({date}; a shared, noisy VM: compare ratios, not absolute numbers). "
             f"Full report: [{rel}/{date}.md]({rel}/{date}.md).", "",
             "| | ratio / value | medians |", "|---|---|---|"]
    lines += [f"| {w} | **{v}** | {d} |" for w, v, d in headline(r)]
    lines.append("")
    if plot_file:
        lines += [f"![secnet against per-pair iptables rules]({rel}/{plot_file})", ""]
    path = os.path.join(REPO, "bench", "README-snippet.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        sys.exit(2)
    with open(sys.argv[1]) as fh:
        results = json.load(fh)
    d = os.path.dirname(os.path.abspath(sys.argv[1]))
    print(write(results, d, snippet=d == os.path.join(REPO, "bench", "results")))
    print(headline_text(results))
