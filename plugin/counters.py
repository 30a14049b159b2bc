"""The nft counters of a network's tables, summed by rule comment.

Read at the moment someone asks (`secnet show`, a metrics scrape), never
polled. The tables are listed *terse* (``nft -t``: without set elements),
so the cost does not grow with the members or with the drop log's flow sets.
"""
from __future__ import annotations

import collections
import json
import logging
import subprocess

from segmentation.backends import nftables as nft

log = logging.getLogger(__name__)


def _list_table(runner, family: str, table: str) -> dict:
    binary = getattr(runner, "binary", None)
    if binary is None:  # a stand-in runner (tests): its own listing
        return runner.list_json("table", family, table)
    res = subprocess.run([binary, "-j", "-t", "list", "table", family, table],
                         capture_output=True, text=True, check=False, timeout=10)
    if res.returncode != 0:
        raise nft.NftError(f"nft list table {family} {table} failed: {res.stderr.strip()}")
    return json.loads(res.stdout or "{}")


def read_counters(runner, network_id: str) -> dict:
    """comment -> [packets, bytes] over both tables of the network (missing tables: nothing)."""
    out = collections.defaultdict(lambda: [0, 0])
    if runner is None:
        return out
    for family in ("inet", "bridge"):
        try:
            data = _list_table(runner, family, nft.table_name(network_id))
        except Exception as exc:  # tables missing: report zeros, the reconciler repairs
            log.warning("cannot read counters of %s: %s", network_id[:12], exc)
            continue
        for obj in data.get("nftables", []):
            rule = obj.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    c = out[rule["comment"]]
                    c[0] += expr["counter"]["packets"]
                    c[1] += expr["counter"]["bytes"]
    return out
