"""What ``secnet show`` and ``secnet explain`` say about DNS rules (read only)."""
from __future__ import annotations

from segmentation.options import NetworkOptions


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
