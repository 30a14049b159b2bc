"""Coexistence with Docker's own iptables rules.

Docker sets the iptables FORWARD policy to DROP. With br_netfilter loaded
(``net.bridge.bridge-nf-call-iptables=1``), bridged traffic between two ports
of *our* bridge passes the iptables FORWARD chain too, and Docker's DROP
would eat it: an ``accept`` in secnet's own nft table cannot override a drop
in another table. Docker leaves the ``DOCKER-USER`` chain to the user and
jumps to it first from FORWARD, so secnet puts two rules per bridge
there (``-i BR`` and ``-o BR``), tagged with a comment, and nothing anywhere
else. Policy itself is enforced in secnet's nftables tables, which run
before Docker's and drop what policy forbids, so these accepts only undo
Docker's blanket DROP for secnet's bridges.
Docker's rules for its own networks are untouched.
"""
from __future__ import annotations

import logging
import shlex
import subprocess
import threading

log = logging.getLogger(__name__)
CHAIN = "DOCKER-USER"
COMMENT_PREFIX = "secnet:"


class DockerFirewall:
    def __init__(self, binaries=("iptables", "ip6tables")):
        self.binaries = binaries
        self._lock = threading.Lock()

    @staticmethod
    def _specs(bridge: str, network_id: str) -> list:
        tail = ["-m", "comment", "--comment", COMMENT_PREFIX + network_id, "-j", "ACCEPT"]
        return [["-i", bridge] + tail, ["-o", bridge] + tail]

    def _run(self, binary: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, check=False)

    def _ensure_chain(self, binary: str) -> bool:
        if self._run(binary, "-t", "filter", "-n", "-L", CHAIN).returncode == 0:
            return True
        # Docker creates DOCKER-USER and the jump to it when it starts; making
        # the chain early is harmless and lets our rule be in place already.
        return self._run(binary, "-t", "filter", "-N", CHAIN).returncode == 0

    def ensure(self, bridge: str, network_id: str) -> None:
        with self._lock:
            for binary in self.binaries:
                if not self._ensure_chain(binary):
                    log.warning("%s: cannot make chain %s", binary, CHAIN)
                    continue
                for spec in self._specs(bridge, network_id):
                    if self._run(binary, "-C", CHAIN, *spec).returncode != 0:
                        res = self._run(binary, "-I", CHAIN, "1", *spec)
                        if res.returncode != 0:
                            raise RuntimeError(f"{binary} -I {CHAIN} failed: {res.stderr.strip()}")

    def remove(self, bridge: str, network_id: str) -> None:
        with self._lock:
            for binary in self.binaries:
                for spec in self._specs(bridge, network_id):
                    while self._run(binary, "-D", CHAIN, *spec).returncode == 0:
                        pass

    def owned(self) -> list:
        """(binary, bridge, network_id) of every secnet rule in DOCKER-USER."""
        out = []
        for binary in self.binaries:
            res = self._run(binary, "-S", CHAIN)
            for line in res.stdout.splitlines() if res.returncode == 0 else ():
                words = shlex.split(line)
                flag = "-i" if "-i" in words else "-o"
                if "--comment" not in words or flag not in words:
                    continue
                comment = words[words.index("--comment") + 1]
                if not comment.startswith(COMMENT_PREFIX):
                    continue
                out.append((binary, words[words.index(flag) + 1], comment[len(COMMENT_PREFIX):]))
        return out
