"""Reading and formatting the benchmark's results dict: lookups, numbers, ratios, medians."""
from __future__ import annotations

import math


def get(d, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def num(x, digits=1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 100 and digits <= 1:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def mmm(s, digits=1, scale=1.0) -> str:
    """'median (min–max)' of a stats dict."""
    if not s or s.get("median") is None:
        return "–"
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s.get("n", 0) <= 1:
        return num(m, digits)
    return f"{num(m, digits)} ({num(lo, digits)}–{num(hi, digits)})"


def ratio(a, b, digits=2) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}×"


def stats_of(values):
    v = sorted(values)
    if not v:
        return None
    pick = lambda q: v[0] + 0 if len(v) == 1 else (
        v[int((len(v) - 1) * q)] + (v[min(int((len(v) - 1) * q) + 1, len(v) - 1)] - v[int((len(v) - 1) * q)])
        * ((len(v) - 1) * q - int((len(v) - 1) * q)))
    return {"n": len(v), "median": pick(0.5), "min": v[0], "max": v[-1], "p95": pick(0.95), "p99": pick(0.99)}


def scale_rules(r) -> int:
    """Rules in force for the scale data plane and the joins at scale."""
    return get(r, "sizes", "scale_rules") or max(get(r, "sizes", "rule_counts", default=[0]))


def med(s):
    return s.get("median") if isinstance(s, dict) else None


def vs(rounds, a, b, unit: str, digits: int = 1) -> tuple:
    """(value, detail) of a/b: the median of the interleaved rounds' ratios when there are any."""
    if not rounds:
        return ratio(a, b), f"{num(a, digits)} / {num(b, digits)} {unit}"
    spread = f"({num(rounds['min'], 2)}–{num(rounds['max'], 2)}×)"
    return (f"{num(med(rounds), 2)}×", f"median of {rounds['n']} interleaved rounds' ratios {spread}; "
            f"medians {num(a, digits)} / {num(b, digits)} {unit}")


def vs_rounds(ab: dict, name: str, ref: str, a, b, unit: str = "Gbit/s") -> tuple:
    """vs() of ``name`` / ``ref`` from an interleaved A/B's rounds (``raw`` per pair, round by
    round) when the A/B has ``ref``; else of the medians ``a`` / ``b`` given."""
    x = get(ab, ref) and stats_of([p / q for p, q in zip(get(ab, name, "raw") or [], get(ab, ref, "raw") or []) if q])
    if x:
        a, b = med(get(ab, name, "gbps")), med(get(ab, ref, "gbps"))
    return vs(x, a, b, unit)
