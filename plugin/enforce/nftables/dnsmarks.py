"""Which DNS answers the daemon holds: a mark on the answer, then iptables' NFQUEUE.

Kernel background. nftables' own ``queue`` statement needs ``nft_queue``
(``CONFIG_NFT_QUEUE``), which this platform's kernel does not have; the
xtables ``NFQUEUE`` target is built in and reachable through iptables
(iptables-nft runs it as an xt expression in its ``mangle`` table, priority
-150). So the hold is two pieces, the same for every backend:

1. ``table inet secnet-dns`` (not ``secnet_...``: the backends own that
   prefix) marks, at priority -160 in ``forward`` (answers routed or bridged
   to a container: an upstream server, Docker's embedded resolver
   forwarding from the container's namespace, another container) and
   ``output`` (a server on the host itself), every packet from source port
   53 (udp, tcp) that is a *reply* of a connection the container opened
   (``ct direction reply``: an unsolicited packet "from port 53" teaches
   nothing) and goes to an address in ``dst4``/``dst6`` -- the containers
   whose segment has DNS rules (``DnsService`` keeps those sets by delta: a
   join is one element)::

       meta l4proto { tcp, udp } th sport 53 ct direction reply ip daddr @dst4 meta mark set meta mark | 0x400000

2. iptables ``mangle`` ``FORWARD`` and ``OUTPUT`` (IPv4 and IPv6) send the
   marked packets to the queue::

       -m mark --mark 0x400000/0x400000 -m comment --comment secnet-dns -j NFQUEUE --queue-num N

There is no ``--queue-bypass``: while no daemon reads the queue, those
answers are dropped (fail closed); answers to other segments pass as before.
The queue rules match the mark bit on any packet of the host, so the table and
the rules exist only while some address is held: made with the first, removed
with the last (the last DNS member gone, the last such network removed), and
removed at start when the daemon's first pass holds none -- nothing of secnet's
stays in the host's path once no DNS rule is in use (U26-F2).

A budget per destination (U21-F4). The queue is one FIFO for every network
(``MAX_LEN`` answers, ``plugin.dns.queue``); a member that floods answers to
itself (replies of a flow it opened to a port-53 server it controls) would
fill it and make every other member's answers wait or be dropped. So before
the mark, a rule drops the answers to one container address beyond
:data:`BUDGET` (500 a second, bursts of 1,000): each address is a key of the
dynamic set ``budget4``/``budget6`` with its own ``limit`` (a stateful
expression per element, as the drop log's per-flow limits in ``drops``);
the rule counts what it drops in the named counter ``budget`` (a rewrite of
the chains keeps its count; rules commented ``secnet-dns-budget``). Only the
flooded member loses answers (fail closed: nothing is learned from them).
500/s is far above what a stub resolver asks for (it caches) and well below
what the daemon takes (3,200-4,100 answers per CPU-second, docs/dns.md); a burst of 1,000
lets a container resolve many names at once yet keeps one member to a
quarter of the queue. An address forgets its budget ``BUDGET_TIMEOUT`` after
its last answer; the sets are bounded (``BUDGET_SIZE``: beyond, an address
has no budget, as before).

Rewrites keep the budgets: the table is declared (a no-op when it is there),
its chains are flushed and their rules added again, and the ``dst`` sets
emptied and filled in the same transaction; only when that fails (someone
made a chain or set of the same name with another shape) is the table
deleted and made anew.
"""
from __future__ import annotations

import ipaddress
import logging
import subprocess
import threading
from typing import Iterable

from plugin.kernel.marks import DNS_HOLD_MARK
from .nftdump import object_counter, table_exists

log = logging.getLogger(__name__)
TABLE = "secnet-dns"
MARK = DNS_HOLD_MARK       # packet mark bit: "a DNS answer to hold"
PRIORITY = -160            # before iptables' mangle (-150) and every filter chain
COMMENT = "secnet-dns"
CHAINS = ("FORWARD", "OUTPUT")


BUDGET = "rate over 500/second burst 1000 packets"
BUDGET_SIZE = 65536
BUDGET_TIMEOUT = "1m"
BUDGET_COMMENT = "secnet-dns-budget"
BUDGET_COUNTER = "budget"


def _answers(chain: str, expr: str, fam: int) -> str:
    return (f"add rule inet {TABLE} {chain} meta l4proto {{ tcp, udp }} th sport 53 "
            f"ct direction reply {expr} daddr @dst{fam}")


def table_script(keep: bool = False, replace: bool = False) -> str:
    """The marking table. ``keep``: the address sets keep their elements (a daemon
    start: answers to the containers a previous daemon marked stay held until the
    first reconcile has told the service every network); else they are emptied (the
    caller adds the wanted ones in the same transaction). ``replace``: the table is
    deleted first (its budgets with it); else they carry on (see the module doc)."""
    head = [f"table inet {TABLE} {{ }}", f"delete table inet {TABLE}"] if replace else []
    budget = f"size {BUDGET_SIZE}; flags dynamic,timeout; timeout {BUDGET_TIMEOUT};"
    lines = head + [f"table inet {TABLE} {{", f"  counter {BUDGET_COUNTER} {{ }}",
                    "  set dst4 { type ipv4_addr; }", "  set dst6 { type ipv6_addr; }",
                    f"  set budget4 {{ type ipv4_addr; {budget} }}", f"  set budget6 {{ type ipv6_addr; {budget} }}"]
    rules = [] if keep or replace else [f"flush set inet {TABLE} dst4", f"flush set inet {TABLE} dst6"]
    for chain in ("forward", "output"):
        lines += [f"  chain {chain} {{ type filter hook {chain} priority {PRIORITY}; policy accept; }}"]
        rules.append(f"flush chain inet {TABLE} {chain}")
        for fam, expr in ((4, "ip"), (6, "ip6")):
            rules.append(f"{_answers(chain, expr, fam)} update @budget{fam} {{ {expr} daddr limit {BUDGET} }} "
                         f"counter name {BUDGET_COUNTER} drop comment \"{BUDGET_COMMENT}\"")
            rules.append(f"{_answers(chain, expr, fam)} meta mark set meta mark | {MARK:#x}")
    lines.append("}")
    return "\n".join(lines + rules) + "\n"


def element_script(verb: str, addresses: Iterable[str]) -> str:
    """``add``/``delete`` of container addresses in the marking sets, one transaction."""
    by_family: dict = {4: [], 6: []}
    for address in addresses:
        by_family[ipaddress.ip_address(address).version].append(str(ipaddress.ip_address(address)))
    return "".join(f"{verb} element inet {TABLE} dst{fam} {{ {', '.join(sorted(addrs))} }}\n"
                   for fam, addrs in by_family.items() if addrs)


class AnswerMarks:
    """The marking table and the queue rules (see the module doc).

    ``runner``: has ``apply(script)`` (one nft transaction); ``prefix``: argv
    put before the iptables binaries (e.g. ``ip netns exec NS``).
    """

    def __init__(self, runner, queue_num: int, binaries=("iptables", "ip6tables"), prefix=()):
        self.runner, self.queue_num = runner, queue_num
        self.binaries, self.prefix = binaries, list(prefix)
        self._lock = threading.Lock()
        self._marked: set = set()
        self._installed = False

    def rule(self) -> list:
        return ["-m", "mark", "--mark", f"{MARK:#x}/{MARK:#x}", "-m", "comment", "--comment", COMMENT,
                "-j", "NFQUEUE", "--queue-num", str(self.queue_num)]

    def _iptables(self, binary: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, binary, "-w", "5", "-t", "mangle", *args],
                              capture_output=True, text=True, check=False)

    def install(self, addresses: Iterable[str] = (), keep: bool = False) -> None:
        """Write the table with ``addresses`` marked (``keep``: and those marked
        before), and ensure the queue rules; raises OSError when iptables refuses
        (nft errors propagate)."""
        with self._lock:
            self._install(set(addresses), keep)

    def _install(self, addresses: set, keep: bool) -> None:
        elements = element_script("add", addresses)
        try:
            self.runner.apply(table_script(keep) + elements)
        except Exception as exc:   # a chain or set of another shape: made anew
            log.warning("DNS answer table %s rewritten whole: %s", TABLE, exc)
            self.runner.apply(table_script(keep, replace=True) + elements)
        self._marked = addresses
        self._installed = True
        self._ensure_rules()

    def present(self) -> bool:
        """Whether the kernel has the table (held answers of a daemon before this one): one
        netlink request (``nft list table`` fetches the whole ruleset first, ~0.4 s beside
        a 50,000-element policy). An error other than "no such table" counts as present:
        the caller then keeps the hold (fail closed)."""
        try:
            return table_exists("inet", TABLE)
        except OSError as exc:
            log.warning("cannot tell whether table inet %s exists (%s): kept", TABLE, exc)
            return True

    def budget_drops(self) -> int:
        """Answers the budget dropped (both families, both chains) since the table was made
        (the named counter ``budget``, read with one netlink request: ``nft list counter``
        fetches the whole ruleset first, ~0.4 s beside a 50,000-element policy, on every
        ``secnet status`` and metrics scrape); 0 while no answer is held (no table).
        Raises OSError."""
        if not self._installed:
            return 0
        return object_counter("inet", TABLE, BUDGET_COUNTER)[0]

    def _ensure_rules(self) -> None:
        for binary in self.binaries:
            for chain in CHAINS:
                if self._iptables(binary, "-C", chain, *self.rule()).returncode == 0:
                    continue
                res = self._iptables(binary, "-I", chain, *self.rule())
                if res.returncode != 0:
                    raise OSError(f"{binary} -t mangle -I {chain}: {res.stderr.strip()}")

    def repair(self) -> None:
        """Put back the queue rules and the table if someone removed them (while any
        address is held: else there is nothing to put back)."""
        with self._lock:
            if self._installed:
                self._install(set(self._marked), keep=False)

    def change(self, added: Iterable[str], removed: Iterable[str]) -> None:
        """Mark answers to ``added`` addresses, no longer to ``removed`` ones (one transaction).
        The first address held makes the table and the queue rules; the last one gone
        removes them."""
        with self._lock:
            added, removed = set(added) - self._marked, set(removed) & self._marked
            removed -= added
            marked = (self._marked - removed) | added
            if not marked:
                if self._installed:
                    self._uninstall()
                return
            if not self._installed:
                self._install(marked, keep=False)
                return
            script = element_script("delete", removed) + element_script("add", added)
            if script:
                self.runner.apply(script)
            self._marked = marked

    def settle(self) -> None:
        """Remove the table and the queue rules if no address is held (the daemon's first
        pass is over: what an earlier daemon held and nobody holds now goes)."""
        with self._lock:
            if not self._marked:
                self._uninstall()

    def marked(self) -> set:
        with self._lock:
            return set(self._marked)

    def uninstall(self) -> None:
        """Remove the queue rules and the table."""
        with self._lock:
            self._uninstall()

    def _uninstall(self) -> None:
        for binary in self.binaries:
            for chain in CHAINS:
                for _ in range(16):
                    if self._iptables(binary, "-D", chain, *self.rule()).returncode != 0:
                        break
        self.runner.apply(f"table inet {TABLE} {{ }}\ndelete table inet {TABLE}\n")
        self._marked = set()
        self._installed = False
