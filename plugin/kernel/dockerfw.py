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

from . import iptpeek

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

    def _restore(self, binary: str, lines: list) -> None:
        """Apply ``lines`` (iptables commands without the binary) to the filter table in one
        ``iptables-restore --noflush``: one process, one transaction (RuntimeError if refused)."""
        self._restore_all({binary: lines})

    def _restore_all(self, writes: dict) -> None:
        """``{binary: lines}``: each binary's lines in one ``BINARY-restore --noflush``, the
        binaries' processes side by side (IPv4 and IPv6 are separate tables). RuntimeError
        naming the first that refused (OSError if one cannot start), after every process
        that started has ended."""
        procs, errors = [], []
        try:
            for binary, lines in writes.items():
                if lines:
                    procs.append((binary, lines, subprocess.Popen(
                        [binary + "-restore", "--noflush", "-w", "5"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        finally:
            for binary, lines, proc in procs:
                script = "*filter\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
                _out, err = proc.communicate(script)
                if proc.returncode != 0:
                    errors.append(f"{binary}-restore failed: {err.strip()[:300]}")
        if errors:
            raise RuntimeError(errors[0])

    def _filter_table(self, binary: str):
        """The filter table as ``-S`` prints it, each line split into words (None if unreadable)."""
        res = self._run(binary, "-t", "filter", "-S")
        if res.returncode != 0:
            return None
        return [shlex.split(line) for line in res.stdout.splitlines()]

    @staticmethod
    def _ours(table: list, network_id: str) -> list:
        """The arguments (after ``-A DOCKER-USER``) of this network's rules, in chain order."""
        return [words[2:] for words in table
                if words[:2] == ["-A", CHAIN] and COMMENT_PREFIX + network_id in words]

    def ensure(self, bridge: str, network_id: str) -> bool:
        """Put the bridge's rules in place; True when some had to be (re)written.

        Per binary: when netlink shows a new network's case (iptables-nft, the
        chain and FORWARD's jump in place, no rule of this network:
        :func:`iptpeek.insert_only`), the four inserts without reading the table;
        else one ``-S`` read of the filter table. Then one ``iptables-restore`` per
        binary that misses something, IPv4 and IPv6 side by side.
        """
        changed, writes = False, {}
        with self._lock:
            for binary in self.binaries:
                if iptpeek.insert_only(binary, CHAIN, COMMENT_PREFIX + network_id):
                    writes[binary] = self._insert_lines(bridge, network_id)
                    changed = True
                    continue
                table = self._filter_table(binary)
                if table is None:
                    log.warning("%s: cannot read the filter table", binary)
                    continue
                writes[binary], rewrite = self._ensure_lines(table, bridge, network_id)
                changed |= rewrite
            self._restore_all(writes)
        return changed

    def ensure_all(self, bridges: dict) -> set:
        """:meth:`ensure` for every ``{network_id: bridge}`` at once: one read of the filter
        table and at most one restore per binary, whatever the number of networks; none
        for a binary whose rules netlink shows intact (:func:`iptpeek.intact`: the chain,
        FORWARD's jump, each network's two ACCEPT and two DROP rules and no other -- the
        common case of the forward repair, woken by every change of FORWARD, Docker's own
        included). Returns the ids of the networks whose rules had to be (re)written."""
        changed, writes = set(), {}
        tags = [COMMENT_PREFIX + nid for nid in bridges]
        with self._lock:
            for binary in self.binaries:
                if iptpeek.intact(binary, CHAIN, tags):
                    continue
                table = self._filter_table(binary)
                if table is None:
                    log.warning("%s: cannot read the filter table", binary)
                    continue
                lines = self._base_lines(table)
                if any(line.startswith("-I FORWARD") for line in lines):
                    changed.update(bridges)
                for nid, bridge in bridges.items():
                    more = self._network_lines(table, bridge, nid)
                    if more[1]:
                        changed.add(nid)
                    lines += more[0]
                writes[binary] = lines
            self._restore_all(writes)
        return changed

    def _ensure_lines(self, table: list, bridge: str, network_id: str) -> tuple:
        """(restore lines, whether that is a rewrite) that put the bridge's rules in place:
        :meth:`_base_lines`, then :meth:`_network_lines`."""
        base = self._base_lines(table)
        lines, rewrite = self._network_lines(table, bridge, network_id)
        return base + lines, rewrite or any(line.startswith("-I FORWARD") for line in base)

    @staticmethod
    def _base_lines(table: list) -> list:
        """The chain (Docker makes it when it starts; early is harmless) and FORWARD's jump
        to it (Docker adds it for IPv4 only unless its ip6tables support is on), if missing."""
        lines = []
        if ["-N", CHAIN] not in table:
            lines.append(f":{CHAIN} - [0:0]")
        if ["-A", "FORWARD", "-j", CHAIN] not in table:
            lines.append(f"-I FORWARD 1 -j {CHAIN}")
        return lines

    def _network_lines(self, table: list, bridge: str, network_id: str) -> tuple:
        """(restore lines, whether that is a rewrite) for one network: rules an older secnet
        wrote differently removed, and the four rules, in order, at the top."""
        specs, ours = self._specs(bridge, network_id), self._ours(table, network_id)
        wanted = {tuple(_generic(spec)) for spec in specs}
        stale = [args for args in ours if tuple(_generic(args)) not in wanted]
        if all(spec in ours for spec in specs):
            return [f"-D {CHAIN} {shlex.join(args)}" for args in stale], False
        # then all again, in order, at the top
        doomed = [f"-D {CHAIN} {shlex.join(args)}" for args in ours]
        return doomed + self._insert_lines(bridge, network_id), True

    def _insert_lines(self, bridge: str, network_id: str) -> list:
        """The four rules of the bridge, inserted in order at the top of the chain."""
        return [f"-I {CHAIN} 1 {shlex.join(spec)}" for spec in reversed(self._specs(bridge, network_id))]

    def remove(self, bridge: str, network_id: str) -> None:
        with self._lock:
            for binary in self.binaries:
                table = self._filter_table(binary)
                ours = self._ours(table, network_id) if table else []
                if ours:
                    self._restore(binary, [f"-D {CHAIN} {shlex.join(args)}" for args in ours])

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


def _generic(args: list) -> list:
    """Rule arguments with the interface names blanked (a rule's shape)."""
    out = list(args)
    for flag in ("-i", "-o"):
        if flag in out:
            out[out.index(flag) + 1] = ""
    return out
