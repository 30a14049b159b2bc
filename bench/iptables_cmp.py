"""Section 5, the way people segment Docker today: iptables rules in Docker's
DOCKER-USER chain on a bridge network, one rule per allowed container pair.

Layout of DOCKER-USER (top to bottom), every rule scoped to this network's
bridge (``-i BR -o BR``) and tagged with the comment ``snbench``:

    N pair rules   -s A -d B -p tcp --dport P -j ACCEPT   (newest first: `iptables -I`)
    the flow       -s CLI -d SRV -p tcp --dport 5201 -j ACCEPT, and -p icmp
    replies        -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    the rest       -j DROP

so every packet of the measured flow walks the N pair rules (the addresses A,
B are other would-be containers of the network, 10.218.1.x -> 10.218.2.x).
Rule updates: ``iptables -w -I DOCKER-USER 1 RULE`` and ``iptables -w -D
DOCKER-USER RULE`` of one more pair rule with N in place. The pair rules
are loaded in bulk with ``iptables-restore --noflush``. At the largest N a
variant with the conntrack rule moved to the top (what a careful admin does)
is measured as well. All added rules are removed at the end, also on
failure, and any rule still tagged ``snbench`` is swept away.

secnet's side: ``nft`` element add/delete (one address into a set and a
verdict map, one ``nft -f`` transaction, as secnet does on a join) in a
scratch table ``inet snbench`` holding N members; ``secnet policy set``
and throughput against N rules are in the scale section.
"""
from __future__ import annotations

import shlex

from .common import (DOCKER_USER, PREFIX, Cleanup, create_network, docker, log, now, remove_all_bench_rules, sh, stats)
from .dataplane import IPERF_PORT, container_pair, measure

NET = f"{PREFIX}-ipt"
BRIDGE = "br-snbench"
SUBNET = "10.218.0.0/16"
CLI, SRV = "10.218.0.10", "10.218.0.11"
CHAIN = DOCKER_USER
TAG = ["-m", "comment", "--comment", PREFIX]


def scoped(*spec: str) -> list:
    return ["-i", BRIDGE, "-o", BRIDGE, *spec, *TAG]


def pair_rule(k: int) -> list:
    src, dst = f"10.218.1.{k % 100 + 1}", f"10.218.2.{(k // 100) % 100 + 1}"
    port = 1000 + k // 10000
    return scoped("-s", src, "-d", dst, "-p", "tcp", "--dport", str(port), "-j", "ACCEPT")


BASE_RULES = [  # inserted in this order with -I 1: the last one ends on top
    scoped("-j", "DROP"),
    scoped("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
    scoped("-s", CLI, "-d", SRV, "-p", "icmp", "-j", "ACCEPT"),
    scoped("-s", CLI, "-d", SRV, "-p", "tcp", "--dport", str(IPERF_PORT), "-j", "ACCEPT"),
]
CT_FIRST = scoped("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")


def _restore(lines: list) -> None:
    body = "*filter\n" + "".join(" ".join(shlex.quote(w) for w in line) + "\n" for line in lines) + "COMMIT\n"
    sh(["iptables-restore", "-w", "5", "--noflush"], input=body, timeout=300)


class Rules:
    """The rules this section added, for certain removal."""

    def __init__(self):
        self.added: list = []

    def insert(self, specs: list) -> None:
        for i in range(0, len(specs), 2000):
            chunk = specs[i:i + 2000]
            _restore([["-I", CHAIN, "1", *s] for s in chunk])
            self.added.extend(chunk)

    def remove_all(self) -> None:
        if self.added:
            try:
                for i in range(0, len(self.added), 2000):
                    _restore([["-D", CHAIN, *s] for s in self.added[i:i + 2000]])
            except Exception as exc:
                log(f"iptables: bulk delete failed ({exc}); deleting one by one")
            self.added = []
        remove_all_bench_rules()


def count_rules() -> int:
    return len(sh(["iptables", "-w", "5", "-S", CHAIN]).stdout.splitlines()) - 1


def update_times(k: int, repeats: int) -> tuple:
    ins, dele = [], []
    rule = pair_rule(k)
    for _ in range(repeats):
        t0 = now()
        sh(["iptables", "-w", "5", "-I", CHAIN, "1", *rule])
        t1 = now()
        sh(["iptables", "-w", "5", "-D", CHAIN, *rule])
        t2 = now()
        ins.append((t1 - t0) * 1000)
        dele.append((t2 - t1) * 1000)
    return ins, dele


def iptables_sweep(sizes) -> dict:
    cleanup = Cleanup()
    rules = Rules()
    out = {"points": {}}
    try:
        create_network(NET, "bridge", SUBNET, "-o", f"com.docker.network.bridge.name={BRIDGE}")
        cleanup.push(f"network {NET}", docker, "network", "rm", NET)
        cleanup.push("iptables rules", rules.remove_all)  # runs before the network goes
        pair = container_pair(cleanup, "bridge-iptables", NET, CLI, SRV)
        # cleanup runs newest first: the containers go, then the rules, then the network
        rules.insert(BASE_RULES)
        have = 0
        for n in (0,) + tuple(sizes.rule_counts):
            rules.insert([pair_rule(k) for k in range(have, n)])
            have = n
            ins, dele = update_times(max(sizes.rule_counts) + 1, sizes.update_repeats)
            point = {"chain_rules": count_rules(), "insert_ms": stats(ins), "delete_ms": stats(dele),
                     "raw_insert_ms": ins, "raw_delete_ms": dele}
            log(f"  iptables N={n}: -I {point['insert_ms']['median']:.1f} ms, "
                f"-D {point['delete_ms']['median']:.1f} ms")
            point["dataplane"] = measure([pair], sizes.sweep_repeats, sizes.iperf_secs)[pair.name]
            out["points"][str(n)] = point
        rules.insert([CT_FIRST])
        out["conntrack_first_at_max"] = {
            "n": have, "dataplane": measure([pair], sizes.sweep_repeats, sizes.iperf_secs)[pair.name]}
    finally:
        errors = cleanup.run()
        left = remove_all_bench_rules()
        out["cleanup"] = {"errors": errors, "tagged_rules_left_after_cleanup": left}
    return out


# --- nft set elements ------------------------------------------------------------------

def _ip(k: int) -> str:
    return f"10.219.{k // 250}.{k % 250 + 1}"


def nft_elements(sizes) -> dict:
    """Time one add and one delete (set + verdict map, one transaction) at N members."""
    out = {}
    table = f"inet {PREFIX}"
    try:
        sh(["nft", "-f", "-"], input=f"table {table} {{\n set m {{ type ipv4_addr; }}\n"
                                      f" map v {{ type ipv4_addr : verdict; }}\n}}\n")
        have = 0
        probe = _ip(max(sizes.rule_counts) + 1)
        for n in sizes.rule_counts:
            new = [_ip(k) for k in range(have, n)]
            for i in range(0, len(new), 2000):
                chunk = new[i:i + 2000]
                sh(["nft", "-f", "-"], input=(
                    f"add element {table} m {{ {', '.join(chunk)} }}\n"
                    f"add element {table} v {{ {', '.join(a + ' : accept' for a in chunk)} }}\n"))
            have = n
            add, dele = [], []
            for _ in range(sizes.update_repeats):
                t0 = now()
                sh(["nft", "-f", "-"], input=f"add element {table} m {{ {probe} }}\n"
                                             f"add element {table} v {{ {probe} : accept }}\n")
                t1 = now()
                sh(["nft", "-f", "-"], input=f"delete element {table} m {{ {probe} }}\n"
                                             f"delete element {table} v {{ {probe} }}\n")
                t2 = now()
                add.append((t1 - t0) * 1000)
                dele.append((t2 - t1) * 1000)
            out[str(n)] = {"add_ms": stats(add), "delete_ms": stats(dele)}
            log(f"  nft N={n}: add {out[str(n)]['add_ms']['median']:.1f} ms, "
                f"delete {out[str(n)]['delete_ms']['median']:.1f} ms")
    finally:
        sh(["nft", "delete", "table", *table.split()], check=False)
    return out


def run(sizes) -> dict:
    log("iptables DOCKER-USER against N pair rules")
    out = {"method": __doc__.strip(), "iptables": iptables_sweep(sizes)}
    log("nft set element add/delete against N members")
    out["nft_elements"] = nft_elements(sizes)
    return out
