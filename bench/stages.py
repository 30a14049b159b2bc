"""Stamps of the daemon's policy path, stage by stage, inside a stand-in daemon.

``install(FILE)`` wraps the functions a ``/secnet/...`` request passes through (the
route, the rule parser, the driver's edit, the reconciler's recompile and delta, the
nftables backend's element delta, netlink encoding and the kernel's ``send()``, the
state write, the flow pruning) with timers; every request appends one JSON line to
FILE: ``{"route": "policy", "stage": ms, ...}`` (a stage called twice sums). Nesting is
kept as it is: ``Reconciler._policy_delta`` includes ``recompile``, ``apply_policy``
includes ``elements``, ``encode`` and ``send``. ``summary(FILE)`` gives per kind of
request (``status``, ``policy get``, ``policy edit``, ``policy set``: a parse over 2 ms)
the median and min of each stage.

Used by ``bench.cliserve --stamps FILE`` (``bench.cliedit --private --stages``); never by
the daemon itself. The timers cost ~1 µs a call: the stages wrapped are called a few
times per request, not per rule.
"""
from __future__ import annotations

import functools
import importlib
import json
import threading
import time

from .common import stats

#: (module, attribute path, label) of the daemon's policy path, outermost first
POLICY_PATH = (
    ("plugin.daemon.api", "Api._handle", "request"),
    ("plugin.daemon.api", "Api.policy", "Api.policy"),
    ("plugin.daemon.api", "parse_rules", "parse"),
    ("plugin.driver.driver", "Driver.edit_options", "driver edit"),
    ("plugin.enforce.reconciler", "Reconciler._policy_delta", "policy delta"),
    ("plugin.enforce.reconciler", "named_after", "named after"),   # (from plugin.enforce.identities)
    ("plugin.enforce.reconciler", "recompile_policy_map", "recompile"),
    ("plugin.enforce.reconciler", "Reconciler._end_denied_flows", "flows"),
    ("plugin.enforce.nftables.backend", "NftBackend.apply_policy", "apply_policy"),
    ("plugin.enforce.nftables.elements", "PolicyElements.change", "elements"),
    ("plugin.enforce.nftables.netlink", "ElementWriter._messages", "encode"),
    ("plugin.enforce.nftables.netlink", "ElementWriter._send", "send"),
    ("plugin.driver.state", "State.put_network", "state"),
)


def stages_but(*labels: str) -> tuple:
    """``POLICY_PATH`` without the stages labelled ``labels``."""
    return tuple(s for s in POLICY_PATH if s[2] not in labels)


#: what ``install`` times: every stage but ``named_after`` (``bench.set_cpu`` times it)
STAGES = stages_but("named after")
_local = threading.local()


def _timed(fn, label: str, out: str = None):
    """``fn`` timed into the current request's stamps; ``out``: the request itself
    (starts the stamps, writes them to the file ``out`` when it returns)."""

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        if out is not None:
            _local.stamps = {"route": args[1] if len(args) > 1 else "?"}
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stamps = getattr(_local, "stamps", None)
            if stamps is not None:
                stamps[label] = stamps.get(label, 0.0) + (time.perf_counter() - t0) * 1000
                if out is not None:
                    with open(out, "a") as f:
                        f.write(json.dumps(stamps) + "\n")
                    _local.stamps = None
    return timed


def install(out: str) -> None:
    """Wrap every stage of ``STAGES``; stamps of each request appended to ``out``."""
    wrap_stages(STAGES, lambda fn, label: _timed(fn, label, out if label == "request" else None))


def wrap_stages(stages, wrap) -> None:
    """Replace each stage's function ``fn`` of ``stages`` ((module, attribute path,
    label) rows) by ``wrap(fn, label)``, where it is looked up (module or class)."""
    for module, path, label in stages:
        owner = importlib.import_module(module)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        setattr(owner, name, wrap(getattr(owner, name), label))


def _kind(stamps: dict) -> str:
    if stamps["route"] != "policy":
        return stamps["route"]
    if stamps.get("parse", 0.0) > 2.0:
        return "policy set"
    return "policy edit" if "driver edit" in stamps else "policy get"


def summary(path: str) -> dict:
    """``{kind: {stage: {"median", "min", "n"}}}`` of the stamps in ``path``."""
    by_kind: dict = {}
    with open(path) as f:
        for line in f:
            stamps = json.loads(line)
            by_kind.setdefault(_kind(stamps), []).append(stamps)
    out = {}
    for kind, rows in by_kind.items():
        labels = [label for _m, _p, label in STAGES if any(label in r for r in rows)]
        out[kind] = {label: {k: round(v, 2) for k, v in stats([r.get(label, 0.0) for r in rows]).items()
                             if k in ("median", "min", "n")} for label in labels}
    return out
