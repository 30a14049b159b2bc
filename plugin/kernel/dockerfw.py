"""Coexistence with Docker's own iptables rules.

Docker sets the iptables FORWARD policy to DROP. With br_netfilter loaded
(``net.bridge.bridge-nf-call-iptables=1``), bridged traffic between two ports
of *our* bridge passes the iptables FORWARD chain too, and Docker's DROP
would eat it: an ``accept`` in secnet's own nft table cannot override a drop
in another table. Docker leaves the ``DOCKER-USER`` chain to the user and
jumps to it first from FORWARD, so secnet puts four rules per bridge
there, tagged with a comment, and nothing anywhere else. Policy itself is
enforced in secnet's nftables tables, which run before Docker's and drop
what policy forbids; what they let through they mark, and DOCKER-USER
accepts only marked packets of the bridge and drops the rest. So if
secnet's tables were ever missing, the bridge's forwarded traffic is
dropped, not let through (fail closed).
Docker's rules for its own networks are untouched.
"""
from __future__ import annotations

import logging
import shlex
import subprocess
import threading

from plugin.enforce.nftables.runner import PASSED_MARK  # set by secnet's nft chain "pass"

log = logging.getLogger(__name__)
CHAIN = "DOCKER-USER"
COMMENT_PREFIX = "secnet:"


class DockerFirewall:
    def __init__(self, binaries=("iptables", "ip6tables")):
        self.binaries = binaries
        self._lock = threading.Lock()

    @staticmethod
    def _specs(bridge: str, network_id: str) -> list:
        """Our rules for one bridge, in chain order: accept what secnet's nft
        chains passed (and marked), drop the rest of the bridge's traffic."""
        tag = ["-m", "comment", "--comment", COMMENT_PREFIX + network_id]
        mark = ["-m", "mark", "--mark", f"{PASSED_MARK:#x}/{PASSED_MARK:#x}"]
        return [["-i", bridge, *mark, *tag, "-j", "ACCEPT"], ["-o", bridge, *mark, *tag, "-j", "ACCEPT"],
                ["-i", bridge, *tag, "-j", "DROP"], ["-o", bridge, *tag, "-j", "DROP"]]

    def _run(self, binary: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, check=False)

    def _ensure_chain(self, binary: str) -> bool:
        if self._run(binary, "-t", "filter", "-n", "-L", CHAIN).returncode == 0:
            return True
        # Docker creates DOCKER-USER and the jump to it when it starts; making
        # the chain early is harmless and lets our rule be in place already.
        return self._run(binary, "-t", "filter", "-N", CHAIN).returncode == 0

    def ensure(self, bridge: str, network_id: str) -> bool:
        """Put the bridge's rules in place; True when some had to be (re)written."""
        changed = False
        with self._lock:
            for binary in self.binaries:
                if not self._ensure_chain(binary):
                    log.warning("%s: cannot make chain %s", binary, CHAIN)
                    continue
                changed |= self._ensure_jump(binary)
                self._drop_stale(binary, network_id)
                specs = self._specs(bridge, network_id)
                if all(self._run(binary, "-C", CHAIN, *spec).returncode == 0 for spec in specs):
                    continue
                self._delete(binary, specs)  # then all again, in order, at the top
                changed = True
                for spec in reversed(specs):
                    res = self._run(binary, "-I", CHAIN, "1", *spec)
                    if res.returncode != 0:
                        raise RuntimeError(f"{binary} -I {CHAIN} failed: {res.stderr.strip()}")
        return changed

    def _ensure_jump(self, binary: str) -> bool:
        """FORWARD must pass through DOCKER-USER (Docker sets that up for IPv4
        only, unless its ip6tables support is on). True when it had to be added."""
        if self._run(binary, "-C", "FORWARD", "-j", CHAIN).returncode != 0:
            self._run(binary, "-I", "FORWARD", "1", "-j", CHAIN)
            return True
        return False

    def _drop_stale(self, binary: str, network_id: str) -> None:
        """Remove rules of this network that an older secnet wrote differently."""
        wanted = {tuple(spec) for spec in self._specs("", network_id)}
        res = self._run(binary, "-S", CHAIN)
        for line in res.stdout.splitlines() if res.returncode == 0 else ():
            words = shlex.split(line)
            if COMMENT_PREFIX + network_id not in words or words[:2] != ["-A", CHAIN]:
                continue
            generic = list(words[2:])
            for flag in ("-i", "-o"):
                if flag in generic:
                    generic[generic.index(flag) + 1] = ""
            if tuple(generic) not in wanted:
                self._run(binary, "-D", CHAIN, *words[2:])

    def _delete(self, binary: str, specs) -> None:
        for spec in specs:
            while self._run(binary, "-D", CHAIN, *spec).returncode == 0:
                pass

    def remove(self, bridge: str, network_id: str) -> None:
        with self._lock:
            for binary in self.binaries:
                self._delete(binary, self._specs(bridge, network_id))

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

    def forward_drops(self) -> bool:
        """True when an iptables FORWARD chain (IPv4 or IPv6) has policy DROP."""
        for binary in self.binaries:
            try:
                res = self._run(binary, "-t", "filter", "-S", "FORWARD")
            except OSError:  # that binary is not installed
                continue
            if res.returncode == 0 and "-P FORWARD DROP" in res.stdout:
                return True
        return False
