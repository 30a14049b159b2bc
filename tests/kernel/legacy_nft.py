"""The current nftables backend (rule text per network) behind the Backend calls
that backend_lab.BackendLab makes: a stopgap so that the backend-neutral tests can
judge the eBPF backend against the reference today. Registered in BACKENDS only
with ``SECNET_TEST_LEGACY_NFT=1``; it goes when the nftables backend implements
plugin.enforce.backend.Backend itself (then register that).

Every call re-renders the network and applies it in one ``nft`` transaction.
No drop events (``reports_drops = False``) and no audit mode (``modes``).
"""
from __future__ import annotations

import shutil
import subprocess

from plugin.enforce.backend import Counters
from segmentation.backends import nftables as nft
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import NetworkOptions
from segmentation.policymap import INTRA
from segmentation.rules import parse_rules


def _options(pm) -> NetworkOptions:
    texts = sorted({e.rule for e in pm.entries if e.rule != INTRA} | {c.rule for c in pm.cidrs})
    s = pm.settings
    return NetworkOptions(rules=parse_rules(", ".join(texts)), intra=s.intra,
                          egress="allow" if s.internal else s.egress, internal=s.internal)


def _port(p) -> nft.Port:
    return nft.Port(endpoint_id=p.endpoint_id, name=p.name, mac=p.mac, ipv4=p.ipv4, ipv6=p.ipv6,
                    segment=p.segment, quarantine=p.quarantine, published=p.published)


class LegacyNft:
    name = "nftables-legacy"
    reports_drops = False
    modes = ("enforce",)

    def __init__(self, _pin_root: str):
        # a child nft per call, forked from the lab's thread: it runs in the lab's
        # namespace (the in-process libnftables context is one per process)
        self.runner = nft.NftRunner(binary=shutil.which("nft") or "/usr/sbin/nft")
        self.net = self.policy = None
        self.ports: dict = {}

    def _render(self) -> None:
        ports = [_port(p) for p in self.ports.values()]
        members = [Member(p.endpoint_id, p.segment, p.ipv4, p.ipv6, p.quarantine) for p in ports]
        compiled = compile_policy(_options(self.policy), members)
        self.runner.apply(nft.render_network(self.net.id, self.net.bridge, compiled, ports,
                                             self.net.subnets))

    def check_host(self) -> None:
        pass

    def apply_network(self, net, policy, ports) -> None:
        self.net, self.policy = net, policy
        self.ports = {p.endpoint_id: p for p in ports}
        self._render()

    def apply_ports(self, net, changes) -> None:
        for old, new in changes:
            if old is not None:
                self.ports.pop(old.endpoint_id, None)
            if new is not None:
                self.ports[new.endpoint_id] = new
        self._render()
        self._cut()

    def apply_policy(self, net, delta) -> None:
        self.net, self.policy = net, self.policy.apply(delta)
        self._render()
        self._cut()

    @staticmethod
    def _cut() -> None:
        """The daemon deletes the conntrack entries of flows a change denies; the
        stopgap forgets them all: what is still allowed is judged anew and goes on."""
        subprocess.run(["conntrack", "-F"], capture_output=True, check=False)

    def remove_network(self, network_id: str) -> None:
        self.runner.apply(nft.render_delete_network(network_id))

    def networks(self) -> set:
        return set()

    def counters(self, net) -> Counters:
        reasons = {}
        for family in ("inet", "bridge"):
            listing = self.runner.list_json("table", family, nft.table_name(net.id))
            for obj in listing.get("nftables", []):
                rule = obj.get("rule") or {}
                comment = rule.get("comment") or ""
                if comment.startswith("deny:"):
                    packets = sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
                    old = reasons.get(comment[5:], (0, 0))
                    reasons[comment[5:]] = (old[0] + packets, 0)
        return Counters(reasons=reasons)

    def watch_drops(self, callback) -> None:
        pass

    def close(self) -> None:
        pass
