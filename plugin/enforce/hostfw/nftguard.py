"""secnet's stand-in for DOCKER-USER when Docker runs its nftables firewall.

With ``--firewall-backend=nftables`` (Docker 29), Docker has no DOCKER-USER
chain and sets no FORWARD drop of its own; its forward chain (table ``ip
docker-bridges``, priority ``filter``) only jumps for Docker's own bridges.
Docker's documentation ("Docker with nftables": *Replacing DOCKER-USER with
an nftables table*) says to use a table of one's own with a base chain on
the same hook. secnet's per-network tables already filter at ``filter - 5``
and mark what they let through (``PASSED_MARK``); this table adds the
fail-closed half that DOCKER-USER gave: at ``filter + 10`` it drops every
forwarded packet of a secnet bridge that secnet's chains did not mark -- so
if a network's table is ever missing, its bridge forwards nothing.

The table is small (two rules per network) and always rewritten whole in one
transaction, from the bridges this process was asked to guard.
"""
from __future__ import annotations

import json
import logging
import threading

from plugin.enforce.nftables.runner import NftError, NftRunner
from plugin.kernel.marks import PASSED_MARK

log = logging.getLogger(__name__)
FAMILY, TABLE = "inet", "secnet-guard"   # not "secnet_...": the reconciler owns that prefix
PRIORITY = "filter + 10"
COMMENT_PREFIX = "secnet:"


def render(bridges: dict) -> str:
    """The whole table for {network id: bridge}, as one nft script (atomic)."""
    mark = f"meta mark & {PASSED_MARK:#x} != {PASSED_MARK:#x}"
    lines = [f"table {FAMILY} {TABLE} {{}}", f"flush table {FAMILY} {TABLE}",
             f"table {FAMILY} {TABLE} {{", "  chain forward {",
             f"    type filter hook forward priority {PRIORITY}; policy accept;"]
    for nid, bridge in sorted(bridges.items()):
        tag = json.dumps(COMMENT_PREFIX + nid)
        for way in ("iifname", "oifname"):
            lines.append(f"    {way} {json.dumps(bridge)} {mark} counter drop comment {tag}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


class NftGuard:
    """ensure/remove/owned like DockerFirewall, in table inet secnet-guard."""

    def __init__(self, runner=None):
        self.runner = runner or NftRunner()
        self._bridges: dict = {}
        self._lock = threading.Lock()

    def ensure(self, bridge: str, network_id: str) -> bool:
        """Guard ``bridge``; True when the kernel's table had to be (re)written."""
        with self._lock:
            self._bridges[network_id] = bridge
            if self._kernel_rules() == self._wanted():
                return False
            self.runner.apply(render(self._bridges))
            return True

    def remove(self, bridge: str, network_id: str) -> None:
        with self._lock:
            if self._bridges.pop(network_id, None) is None and not any(
                    nid == network_id for _w, _b, nid in self.owned()):
                return
            self.runner.apply(render(self._bridges))

    def drop_all(self) -> None:
        """Remove the table (the engine no longer runs nftables)."""
        with self._lock:
            self._bridges.clear()
            try:
                self.runner.apply(f"delete table {FAMILY} {TABLE}\n")
            except NftError:
                pass  # not there

    def _wanted(self) -> set:
        return {(b, nid) for nid, b in self._bridges.items()}

    def _kernel_rules(self) -> set:
        """(bridge, network id) of each guarded way, if both ways are present."""
        seen: dict = {}
        for _where, bridge, nid in self.owned():
            seen[(bridge, nid)] = seen.get((bridge, nid), 0) + 1
        return {key for key, n in seen.items() if n == 2}

    def owned(self) -> list:
        """("nft", bridge, network id) of every rule in the table."""
        try:
            data = self.runner.list_json("table", FAMILY, TABLE)
        except NftError:
            return []
        out = []
        for obj in data.get("nftables", []):
            rule = obj.get("rule")
            if not rule or not str(rule.get("comment", "")).startswith(COMMENT_PREFIX):
                continue
            bridge = next((e["match"]["right"] for e in rule.get("expr", [])
                           if "match" in e and e["match"].get("left") in
                           ({"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}})), None)
            if bridge:
                out.append(("nft", bridge, rule["comment"][len(COMMENT_PREFIX):]))
        return out
