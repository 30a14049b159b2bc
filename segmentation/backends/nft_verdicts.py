"""How secnet's nft rules drop: one place, so every drop is counted (and logged) alike.

Each drop carries a comment ``deny:<reason>``; the counters behind those
comments feed `secnet show` and the metrics, and the reason names why
policy dropped a flow (no-rule, egress, quarantined, spoofed, ...).
"""
from __future__ import annotations


def quote(name: str) -> str:
    return '"' + name + '"'


def deny(reason: str) -> str:
    """The statement that ends a rule dropping a packet for ``reason``."""
    return f"counter drop comment {quote('deny:' + reason)}"
