"""The nftables backend's counters, put together: what the kernel counted (policy set
elements, pair sets, rule comments) turned into :class:`plugin.enforce.backend.Counters`.
Pure: the backend reads the kernel, this adds up."""
from __future__ import annotations

from plugin.enforce.backend import Counters

from .drops import named_pairs


def assemble(counts: dict, by_rule: dict, learned: dict, attribution: dict, ports: dict,
             port_sets: dict) -> Counters:
    """Counters from the kernel's figures.

    ``counts``: ``{set: {element: (packets, bytes)}}`` (policy and pair sets);
    ``by_rule``: ``{comment: (packets, bytes)}`` of the counted rules (``deny:REASON``,
    ``audit:REASON``); ``learned``: ``{(FQDN_TAG_KEY, tag): (packets, bytes)}``, spread to
    rules by the reconciler; ``attribution``: ``{set: {element: keys}}``, the policy
    entries each element stands for; ``ports``/``port_sets``: the realized ports, to name
    the bridge table's pairs (:func:`drops.named_pairs`)."""
    allowed: dict = dict(learned)
    once: dict = dict(learned)      # an element's counter given to one of its keys: pair totals add it once
    for name, els in attribution.items():
        for element, keys in els.items():
            count = counts.get(name, {}).get(element) or (0, 0)
            for key in keys:
                allowed[key] = _add(allowed.get(key), count)
            if keys:
                first = min(keys)
                once[first] = _add(once.get(first), count)
    reasons = {c[len("deny:"):]: tuple(v) for c, v in by_rule.items() if c.startswith("deny:")}
    would = {c[len("audit:"):]: tuple(v) for c, v in by_rule.items() if c.startswith("audit:")}
    dropped, audits = named_pairs(counts, ports, port_sets)
    return Counters(allowed=allowed, allowed_once=once, dropped=dropped, reasons=reasons,
                    would_drop=audits, would_drop_reasons=would)


def _add(total, count) -> tuple:
    return count if total is None else (total[0] + count[0], total[1] + count[1])
