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
Docker's rules for its own networks are untouched, and so are the admin's
own rules in DOCKER-USER (Docker's documented place for them, e.g. who may
reach published ports): secnet's rules go below them, just above Docker's
closing ``-j RETURN``, so that they still apply to every secnet network
(U18-F7: inserted at the top, a network made after the admin's rule escaped it).
Before they accept, the bridge's traffic walks Docker's DOCKER-ISOLATION-STAGE-1
when it exists, so that Docker's ``--internal`` networks keep their traffic in
(U18-F6); Docker's other bridge networks are "outside", judged by secnet's rules.
"""
from __future__ import annotations

import logging
import shlex
import subprocess
import threading

from plugin.kernel.marks import PASSED_MARK  # set by secnet's nft chain "pass"

from . import iptpeek

log = logging.getLogger(__name__)
CHAIN = "DOCKER-USER"
COMMENT_PREFIX = "secnet:"
#: Docker's first isolation chain: among its rules, those that keep an ``--internal``
#: bridge network's traffic in (``! -s SUBNET -o BRIDGE -j DROP``, ``! -d SUBNET -i
#: BRIDGE -j DROP``; moby libnetwork drivers/bridge setup_ip_tables.go). FORWARD jumps to
#: it after DOCKER-USER, so a flow secnet accepts there never met it.
ISOLATION = "DOCKER-ISOLATION-STAGE-1"


class DockerFirewall:
    def __init__(self, binaries=("iptables", "ip6tables")):
        self.binaries = binaries
        self._lock = threading.Lock()

    @staticmethod
    def _specs(bridge: str, network_id: str, isolation: bool = False) -> list:
        """Our rules for one bridge, in chain order: when Docker's isolation chain exists
        (``isolation``), the bridge's traffic walks it first (Docker's ``--internal``
        networks keep their traffic in, U18-F6; its other rules match Docker's own bridges
        only, and it returns); then accept what secnet's nft chains passed (and marked),
        drop the rest of the bridge's traffic."""
        tag = ["-m", "comment", "--comment", COMMENT_PREFIX + network_id]
        mark = ["-m", "mark", "--mark", f"{PASSED_MARK:#x}/{PASSED_MARK:#x}"]
        walk = [["-i", bridge, *tag, "-j", ISOLATION], ["-o", bridge, *tag, "-j", ISOLATION]] if isolation else []
        return [*walk, ["-i", bridge, *mark, *tag, "-j", "ACCEPT"], ["-o", bridge, *mark, *tag, "-j", "ACCEPT"],
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
        return [args for args in _chain_rules(table) if COMMENT_PREFIX + network_id in args]

    def ensure(self, bridge: str, network_id: str) -> bool:
        """Put the bridge's rules in place; True when some had to be (re)written.

        Per binary: when netlink shows a new network's case (iptables-nft, the
        chain and FORWARD's jump in place, no rule of this network:
        :func:`iptpeek.chain_tail`), the inserts without reading the table;
        else one ``-S`` read of the filter table. Then one ``iptables-restore`` per
        binary that misses something, IPv4 and IPv6 side by side.
        """
        changed, writes = False, {}
        with self._lock:
            for binary in self.binaries:
                tail = iptpeek.chain_tail(binary, CHAIN, COMMENT_PREFIX + network_id)
                if tail is not None:
                    at, chains = tail
                    writes[binary] = _place(self._specs(bridge, network_id, ISOLATION in chains), at)
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
        FORWARD's jump, each network's two ACCEPT and two DROP rules and no other, and no
        admin's rule below them -- the common case of the forward repair, woken by every
        change of FORWARD, Docker's own included). Returns the ids of the networks whose rules had to be (re)written."""
        changed, writes = set(), {}
        tags = [COMMENT_PREFIX + nid for nid in bridges]
        with self._lock:
            for binary in self.binaries:
                if iptpeek.intact(binary, CHAIN, tags, _verdicts, COMMENT_PREFIX):
                    continue
                table = self._filter_table(binary)
                if table is None:
                    log.warning("%s: cannot read the filter table", binary)
                    continue
                lines, rules = self._base_lines(table), _chain_rules(table)
                if any(line.startswith("-I FORWARD") for line in lines):
                    changed.update(bridges)
                for nid, bridge in bridges.items():
                    more = self._network_lines(table, rules, bridge, nid)
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
        lines, rewrite = self._network_lines(table, _chain_rules(table), bridge, network_id)
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

    def _network_lines(self, table: list, rules: list, bridge: str, network_id: str) -> tuple:
        """(restore lines, whether that is a rewrite) for one network, given ``rules`` (the
        chain's rules' arguments, in order, as the lines before these leave them; updated to
        what these leave): rules an older secnet wrote differently removed; when one is
        missing, or an admin's rule sits below ours (older secnet code inserted at the top),
        all of them again, in order, above the chain's first plain RETURN."""
        specs = self._specs(bridge, network_id, ["-N", ISOLATION] in table)
        tag = COMMENT_PREFIX + network_id
        ours = [args for args in rules if tag in args]
        wanted = {tuple(_generic(spec)) for spec in specs}
        stale = [args for args in ours if tuple(_generic(args)) not in wanted]
        if all(spec in ours for spec in specs) and not _below_others(rules, tag):
            for args in stale:
                rules.remove(args)
            return [f"-D {CHAIN} {shlex.join(args)}" for args in stale], False
        for args in ours:
            rules.remove(args)
        at = next((i for i, args in enumerate(rules, 1) if args == ["-j", "RETURN"]), 0)
        index = at - 1 if at else len(rules)
        rules[index:index] = specs
        return [f"-D {CHAIN} {shlex.join(args)}" for args in ours] + _place(specs, at), True

    def _filter_tables(self) -> dict:
        """``{binary: its filter table as -S prints it, each line split into words}`` (None
        for one that cannot be read or run), every binary's ``-S`` process side by side."""
        procs, tables = {}, {}
        try:
            for binary in self.binaries:
                try:
                    procs[binary] = subprocess.Popen([binary, "-w", "5", "-t", "filter", "-S"],
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                except OSError:   # that binary is not installed
                    tables[binary] = None
        finally:
            for binary, proc in procs.items():
                out, _err = proc.communicate()
                tables[binary] = [shlex.split(line) for line in out.splitlines()] if proc.returncode == 0 else None
        return tables

    def remove(self, bridge: str, network_id: str) -> None:
        """Delete this network's rules of every binary: the reads of the filter tables, then
        the restores, each binary's process side by side (DeleteNetwork waits for them)."""
        with self._lock:
            writes = {binary: [f"-D {CHAIN} {shlex.join(args)}" for args in self._ours(table, network_id)]
                      for binary, table in self._filter_tables().items() if table}
            self._restore_all(writes)

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


def _verdicts(chains) -> dict:
    """Each network's rules by the verdict they end in, given the filter table's chain names."""
    return {"JUMP": 2 if ISOLATION in chains else 0, "ACCEPT": 2, "DROP": 2}


def _chain_rules(table: list) -> list:
    """The arguments (after ``-A DOCKER-USER``) of every rule of the chain, in order."""
    return [words[2:] for words in table if words[:2] == ["-A", CHAIN]]


def _below_others(rules: list, tag: str) -> bool:
    """Whether a rule that is not secnet's sits between the first rule tagged ``tag`` and the
    chain's first plain RETURN (an admin's rule that ours would jump ahead of)."""
    first = next((i for i, args in enumerate(rules) if tag in args), None)
    if first is None:
        return False
    for args in rules[first:]:
        if args == ["-j", "RETURN"]:
            return False
        if not any(word.startswith(COMMENT_PREFIX) for word in args):
            return True
    return False


def _place(specs: list, at: int) -> list:
    """Restore lines that put ``specs`` in order at 1-based position ``at`` of the chain
    (above what is there), or at its end when ``at`` is 0."""
    if not at:
        return [f"-A {CHAIN} {shlex.join(spec)}" for spec in specs]
    return [f"-I {CHAIN} {at} {shlex.join(spec)}" for spec in reversed(specs)]


def _generic(args: list) -> list:
    """Rule arguments with the interface names blanked (a rule's shape)."""
    out = list(args)
    for flag in ("-i", "-o"):
        if flag in out:
            out[out.index(flag) + 1] = ""
    return out
