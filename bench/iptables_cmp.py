"""Section 5, the way people segment Docker today: iptables rules in Docker's
DOCKER-USER chain on a bridge network, one rule per allowed container pair.

The rules sit in a chain of their own, ``snbench-pairs``, which the top of DOCKER-USER
jumps to for this network's bridge (one rule: ``-i BR -o BR -j snbench-pairs``, tagged with
the comment ``snbench``). Layout of that chain (top to bottom), every rule scoped to the
bridge (``-i BR -o BR``) and tagged alike:

    N pair rules   -s A -d B -p tcp --dport P -j ACCEPT   (newest first: `iptables -I`)
    the flow       -s CLI -d SRV -p tcp --dport 5201 -j ACCEPT, and -p icmp
    replies        -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    the rest       -j DROP

so every packet of the measured flow walks the jump and the N pair rules (the addresses A,
B are other would-be containers of the network, 10.218.1.x -> 10.218.2.x).
Rule updates: ``iptables -w -I snbench-pairs 1 RULE`` and ``iptables -w -D
snbench-pairs RULE`` of one more pair rule with N in place. The pair rules
are loaded in bulk with ``iptables-restore --noflush``. At the largest N a
variant with the conntrack rule moved to the top (what a careful admin does)
is measured as well. At the end, also on failure, the jump is deleted and the chain
flushed and deleted in one ``iptables-restore`` (one transaction: 0.4 s at 10,000 rules,
6.7 s at 50,000 here; deleting them one ``-D RULE`` each, as before 2026-11-30, took 219 s at
10,000 and passed 300 s at 50,000, each ``-D`` a search of the chain:
results/2026-11-30-perfchk.md); any rule of DOCKER-USER still tagged ``snbench`` is swept
away. DOCKER-USER's ``iptables -S`` before and after is compared (``cleanup.docker_user_same``; a secnet daemon
running meanwhile may change it too). ``python -m bench.iptables_cmp --cleanup-check N`` does
only that on the host (no Docker, no traffic): N rules in, cleaned up, timed, compared.

secnet's side: ``nft`` element add/delete (one address into a set and a
verdict map, one ``nft -f`` transaction, as secnet does on a join) in a
scratch table ``inet snbench`` holding N members; ``secnet policy set``
and throughput against N rules are in the scale section.
"""
from __future__ import annotations

import argparse
import json
import shlex

from .common import (BENCH_CHAIN, DOCKER_USER, PREFIX, Cleanup, create_network, docker, log, now,
                     remove_all_bench_rules, sh, stats)
from .dataplane import IPERF_PORT, container_pair, measure

NET = f"{PREFIX}-ipt"
BRIDGE = "br-snbench"
SUBNET = "10.218.0.0/16"
CLI, SRV = "10.218.0.10", "10.218.0.11"
CHAIN = BENCH_CHAIN
TAG = ["-m", "comment", "--comment", PREFIX]
JUMP = ["-i", BRIDGE, "-o", BRIDGE, *TAG, "-j", CHAIN]   # the one rule in DOCKER-USER


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


def docker_user() -> list:
    """``iptables -S DOCKER-USER``, line by line."""
    return sh(["iptables", "-w", "5", "-S", DOCKER_USER]).stdout.splitlines()


class Rules:
    """The rules this section added: in ``CHAIN``, jumped to from DOCKER-USER once the
    first rules go in (the chain and the jump made in the same transaction)."""

    def __init__(self):
        self.added = 0
        self.made = False

    def insert(self, specs: list) -> None:
        for i in range(0, len(specs), 2000):
            head = [] if self.made else [[f":{CHAIN}", "-", "[0:0]"], ["-I", DOCKER_USER, "1", *JUMP]]
            _restore(head + [["-I", CHAIN, "1", *s] for s in specs[i:i + 2000]])
            self.made = True
            self.added += len(specs[i:i + 2000])

    def remove_all(self) -> None:
        """The jump, then the chain (flushed, deleted): one transaction; then any tagged
        rule left in DOCKER-USER (an earlier run's) and the chain if it is still there."""
        if self.made:
            try:
                _restore([["-D", DOCKER_USER, *JUMP], ["-F", CHAIN], ["-X", CHAIN]])
            except Exception as exc:
                log(f"iptables: removing chain {CHAIN} failed ({exc}); sweeping")
            self.made, self.added = False, 0
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
    before = docker_user()
    try:
        create_network(NET, "bridge", SUBNET, "-o", f"com.docker.network.bridge.name={BRIDGE}")
        cleanup.push(f"network {NET}", docker, "network", "rm", NET)
        cleanup.push("iptables rules", lambda: out.update(rules_removed_s=_timed(rules.remove_all)))
        # (runs before the network goes)
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
        out["cleanup"] = {"errors": errors, "tagged_rules_left_after_cleanup": left,
                          **_compare(before, docker_user())}
    return out


def _timed(fn) -> float:
    t0 = now()
    fn()
    return round(now() - t0, 2)


def _compare(before: list, after: list) -> dict:
    """DOCKER-USER after the section against before it: the same, or the lines that differ."""
    return {"docker_user_same": before == after,
            "docker_user_only_before": [x for x in before if x not in after],
            "docker_user_only_after": [x for x in after if x not in before]}


def cleanup_check(n: int) -> dict:
    """On the host, no Docker, no traffic: ``BASE_RULES`` and ``n`` pair rules in (the jump
    from DOCKER-USER and the chain), timed; then removed, timed; DOCKER-USER compared."""
    before, rules = docker_user(), Rules()
    out: dict = {"rules": n}
    try:
        out["insert_s"] = _timed(lambda: rules.insert(BASE_RULES + [pair_rule(k) for k in range(n)]))
        out["chain_rules"] = count_rules()
        out["docker_user_during"] = docker_user()
    finally:
        out["remove_s"] = _timed(rules.remove_all)
        out.update(_compare(before, docker_user()))
        out["chain_left"] = sh(["iptables", "-w", "5", "-n", "-L", CHAIN], check=False).returncode == 0
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


def main() -> int:
    ap = argparse.ArgumentParser(description="the iptables section's rules on the host: in, out, timed")
    ap.add_argument("--cleanup-check", type=int, metavar="N", required=True)
    res = cleanup_check(ap.parse_args().cleanup_check)
    print(json.dumps(res, indent=1))
    return 0 if res["docker_user_same"] and not res["chain_left"] else 1


def run(sizes) -> dict:
    log("iptables DOCKER-USER against N pair rules")
    out = {"method": __doc__.strip(), "iptables": iptables_sweep(sizes)}
    log("nft set element add/delete against N members")
    out["nft_elements"] = nft_elements(sizes)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
