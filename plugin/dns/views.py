"""What ``secnet show`` and ``secnet explain`` say about DNS rules (read only)."""
from __future__ import annotations

from dataclasses import replace

from plugin.enforce.backend import Counters
from segmentation.options import NetworkOptions
from segmentation.policymap import FQDN_KEY, FQDN_TAG_KEY as TAG_KEY


def dns_rows(options: NetworkOptions, learned: dict) -> list:
    """One row per DNS rule, each source segment's addresses with their answers.

    ``learned``: ``(segment, rule) -> {address: Learned}`` (``DnsService.learned``).
    Row: ``{"rule", "addresses": [{"segment", "address", "name", "learned", "expires"}]}``,
    addresses sorted by segment then address; times are Unix seconds.
    """
    rows = []
    for rule in options.rules:
        if rule.dst.kind != "fqdn":
            continue
        text, found = rule.text(), []
        for (segment, origin), addrs in sorted(learned.items()):
            if origin != text:
                continue
            for address, answer in sorted(addrs.items()):
                found.append({"segment": segment, "address": address, "name": answer.name,
                              "learned": answer.learned, "expires": answer.expires})
        rows.append({"rule": text, "addresses": found})
    return rows


def answer_view(answer) -> dict | None:
    """The DNS answer behind an ``explain`` verdict, as JSON."""
    if answer is None:
        return None
    return {"address": answer.address, "name": answer.name, "learned": answer.learned,
            "expires": answer.expires}


def learned_counters(counters: Counters, policy, tags: dict) -> Counters:
    """``counters`` with the datapath's DNS keys spread to the DNS rules' own keys
    (``FqdnEntry.key``): a tag's ``(TAG_KEY, tag)`` to each rule of ``tags[tag]``
    (``LearnedStore.tags``: ``(identity, proto, lo, hi, rule)`` sets), a service key
    (``FqdnEntry.service_key``: tag 0, not known) to every DNS rule of ``policy`` with
    that segment and service. ``allowed_once`` gives each to the first of them (pair
    totals count a flow once). A tag no longer known (a restarted daemon whose
    elements of it expired) counts for no rule."""
    by_service: dict = {}
    for f in policy.fqdns:
        by_service.setdefault(f.service_key, []).append(f.key)
    allowed, once = dict(counters.allowed), dict(counters.allowed_once or counters.allowed)
    for key in [k for k in allowed if k and k[0] in (TAG_KEY, FQDN_KEY) and len(k) <= 5]:
        value, first = allowed.pop(key), once.pop(key, None)
        owners = sorted((FQDN_KEY,) + t for t in tags.get(key[1], ())) if key[0] == TAG_KEY \
            else sorted(by_service.get(key, ()))
        for owner in owners:
            allowed[owner] = _add(allowed.get(owner), value)
        if owners and first:
            once[owners[0]] = _add(once.get(owners[0]), first)
    return replace(counters, allowed=allowed, allowed_once=once)


def _add(total, value) -> tuple:
    return tuple(a + b for a, b in zip(total or (0, 0), value))
