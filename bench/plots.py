"""The benchmark's plots (matplotlib, Agg): one PNG per section, from the results dict."""
from __future__ import annotations

from .fmt import get


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plain_log_ticks(ax) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _err(stats_list, scale=1.0):
    meds = [(s or {}).get("median") or 0.0 for s in stats_list]
    lo = [max(0.0, m - ((s or {}).get("min") or m)) * scale for m, s in zip(meds, stats_list)]
    hi = [max(0.0, ((s or {}).get("max") or m) - m) * scale for m, s in zip(meds, stats_list)]
    return [m * scale for m in meds], [lo, hi]


def plot_dataplane(r, path) -> bool:
    dp = get(r, "dataplane", "configs")
    if not dp:
        return False
    plt = _plt()
    names = [n for n in ("veth", "bridge", "secnet", "secnet-policy", "secnet-scale") if n in dp]
    labels = {"veth": "bare veth", "bridge": "docker bridge", "secnet": "secnet\nno rules",
              "secnet-policy": "secnet\nallowing policy",
              "secnet-scale": "secnet\n1k endpoints\n10k rules"}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    y, e = _err([dp[n]["gbps"] for n in names])
    a1.bar(range(len(names)), y, yerr=e, capsize=4, color="#4c72b0")
    a1.set_ylabel("TCP throughput, Gbit/s (iperf3)")
    y, e = _err([dp[n]["rtt_ms"] for n in names], 1000)
    a2.bar(range(len(names)), y, yerr=e, capsize=4, color="#dd8452")
    a2.set_ylabel("round-trip time, µs (ping, median of 50)")
    for a in (a1, a2):
        a.set_xticks(range(len(names)))
        a.set_xticklabels([labels.get(n, n) for n in names], fontsize=8)
        a.grid(axis="y", alpha=0.3)
    fig.suptitle("Container to container (median of repeats; bars: min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_control(r, path) -> bool:
    cp = get(r, "control")
    if not cp or "error" in cp:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = [("network create", lambda d: get(cp, "network", d, "create", "stats")),
              ("network rm", lambda d: get(cp, "network", d, "rm", "stats")),
              ("run until it answers", lambda d: get(cp, "run", d, "answered"))]
    width = 0.2
    for k, (d, q, color) in enumerate((("secnet", "median", "#4c72b0"), ("secnet", "p95", "#9ab0d8"),
                                        ("bridge", "median", "#dd8452"), ("bridge", "p95", "#f0bf9c"))):
        vals = [(fn(d) or {}).get(q) or 0 for _, fn in groups]
        ax.bar([i + (k - 1.5) * width for i in range(len(groups))], vals, width,
               label=f"{d} {'p50' if q == 'median' else q}", color=color)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g for g, _ in groups])
    ax.set_ylabel("ms")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Control plane, secnet against Docker's bridge driver")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scale(r, path) -> bool:
    sc = get(r, "dataplane", "scale")
    raw = get(sc, "joins", "raw_total_ms")
    if not raw:
        return False
    plt = _plt()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
    a1.plot(range(1, len(raw) + 1), raw, ".", ms=2, alpha=0.5, label="each join")
    marks = get(sc, "joins", "marks") or {}
    xs = sorted(marks, key=int)
    y, e = _err([marks[x] for x in xs])
    a1.errorbar([int(x) for x in xs], y, yerr=e, fmt="o", color="#c44e52", capsize=4,
                label="marks (median of 5)")
    a1.set_yscale("log")
    _plain_log_ticks(a1)
    a1.set_xlabel("join number")
    a1.set_ylabel("CreateEndpoint + Join, ms")
    a1.legend(fontsize=8)
    rss = get(sc, "rss_mib") or {}
    xs = sorted(rss, key=int)
    y, e = _err([rss[x] for x in xs])
    a2.errorbar([int(x) for x in xs], y, yerr=e, fmt="o-", capsize=4)
    a2.set_xlabel("endpoints")
    a2.set_ylabel("daemon RSS, MiB")
    a2.set_ylim(bottom=0)
    sweep = get(sc, "sweep") or {}
    xs = sorted((x for x in sweep if "policy_set_ms" in sweep[x]), key=int)
    if xs:
        y, e = _err([sweep[x]["policy_set_ms"] for x in xs])
        a3.errorbar([int(x) for x in xs], y, yerr=e, fmt="o-", capsize=4)
        a3.set_xscale("log")
        _plain_log_ticks(a3)
        a3.set_ylim(bottom=0)
    a3.set_xlabel("rules")
    a3.set_ylabel("secnet policy set, ms")
    for a in (a1, a2, a3):
        a.grid(alpha=0.3)
    fig.suptitle(f"Scale: {len(raw):,} endpoints through the plugin API")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_rules(r, path) -> bool:
    ipt = get(r, "iptables", "iptables", "points")
    sweep = get(r, "dataplane", "scale", "sweep")
    if not ipt and not sweep:
        return False
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ns = sorted(set(ipt or {}) | set(sweep or {}), key=int)
    pos = {n: i for i, n in enumerate(ns)}
    for src, label, color, dx in ((ipt, "bridge + iptables DOCKER-USER", "#dd8452", -0.1),
                                  (sweep, "secnet", "#4c72b0", 0.1)):
        if not src:
            continue
        xs = [n for n in ns if n in src]
        y, e = _err([src[n]["dataplane"]["gbps"] for n in xs])
        a1.errorbar([pos[n] + dx for n in xs], y, yerr=e, fmt="o-", capsize=4, color=color, label=label)
    a1.set_xticks(range(len(ns)))
    a1.set_xticklabels([f"{int(n):,}" for n in ns])
    a1.set_xlabel("rules in place")
    a1.set_ylabel("TCP throughput, Gbit/s")
    a1.set_ylim(bottom=0)
    a1.legend(fontsize=8)
    a1.set_title("Throughput of an allowed flow")
    series = []
    if ipt:
        series += [("iptables -I (one rule)", ipt, "insert_ms", "#dd8452", "o-"),
                   ("iptables -D (one rule)", ipt, "delete_ms", "#c44e52", "s-")]
    nft = get(r, "iptables", "nft_elements")
    if nft:
        series += [("nft element add (a secnet join)", nft, "add_ms", "#55a868", "o--"),
                   ("nft element delete (a secnet leave)", nft, "delete_ms", "#8172b2", "s--")]
    if sweep:
        series += [("secnet policy set (all N rules)", sweep, "policy_set_ms", "#4c72b0", "^-")]
    for label, src, key, color, style in series:
        xs = [n for n in ns if n in src and key in src[n] and int(n) > 0]
        if not xs:
            continue
        y, e = _err([src[n][key] for n in xs])
        a2.errorbar([int(n) for n in xs], y, yerr=e, fmt=style, capsize=3, color=color, label=label)
    a2.set_xscale("log")
    a2.set_yscale("log")
    _plain_log_ticks(a2)
    a2.set_xlabel("rules (iptables, policy) / set members (nft)")
    a2.set_ylabel("ms")
    a2.legend(fontsize=7)
    a2.set_title("Update latency")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.suptitle("Segmenting with per-pair iptables rules against secnet (medians; bars: min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_enforce(r, path) -> bool:
    en = get(r, "enforce")
    raw = get(en, "raw_since_start_ms")
    if not raw:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("raw_since_start_ms", "allowed peer answers"),):
        v = sorted(en[key])
        ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], drawstyle="steps-post", label=label)
    ax.set_xlabel("ms from the start of docker run -d until the allowed peer's first answer")
    ax.set_ylabel("fraction of starts")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Time to enforce ({len(raw)} starts; forbidden probes answered: "
                 f"{en.get('forbidden_probes_answered')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS = (("rules", plot_rules), ("dataplane", plot_dataplane), ("control", plot_control),
         ("scale", plot_scale), ("enforce", plot_enforce))
