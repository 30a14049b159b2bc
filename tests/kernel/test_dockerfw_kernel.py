"""DockerFirewall's quick path on the real kernel, in a throwaway namespace: the
netlink look at iptables-nft's filter table (``iptpeek``) decides when a new
network's DOCKER-USER rules can be inserted without ``iptables -S``, and the
rules it writes are the ones the read path writes."""
from __future__ import annotations

import shlex
import uuid

import pytest

from packets import netns, sh
from plugin.enforce.hostfw import dockerfw, iptpeek
from plugin.enforce.hostfw.dockerfw import CHAIN, ISOLATION, DockerFirewall

NET_A, NET_B = "a1" * 32, "b2" * 32


@pytest.fixture
def ns():
    if not iptpeek.nft_based("iptables"):
        pytest.skip("iptables here is not iptables-nft")
    name = f"snfw-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def run(ns: str, *argv: str) -> str:
    return sh("ip", "netns", "exec", ns, *argv).stdout


def docker_user(ns: str, closing_return: bool = False) -> None:
    """DOCKER-USER as Docker makes it, for both families: the chain, FORWARD's jump to it
    and (Docker 17.06+) its closing ``-j RETURN``."""
    for binary in ("iptables", "ip6tables"):
        run(ns, binary, "-N", CHAIN)
        run(ns, binary, "-A", "FORWARD", "-j", CHAIN)
        if closing_return:
            run(ns, binary, "-A", CHAIN, "-j", "RETURN")


class Counting(DockerFirewall):
    """A DockerFirewall that counts its ``-S`` reads of the filter table."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def _filter_table(self, binary):
        self.reads += 1
        return super()._filter_table(binary)

    def _filter_tables(self):
        self.reads += len(self.binaries)
        return super()._filter_tables()


def peek(ns: str, tag: str, binary: str = "iptables") -> bool:
    with netns(ns):
        return iptpeek.chain_tail(binary, CHAIN, tag) is not None


def test_the_quick_path_needs_the_chain_the_jump_and_no_rule_of_the_network(ns):
    assert not peek(ns, "secnet:" + NET_A)          # no filter table at all
    run(ns, "iptables", "-N", CHAIN)
    assert not peek(ns, "secnet:" + NET_A)          # FORWARD does not jump to it
    run(ns, "iptables", "-A", "FORWARD", "-g", CHAIN)
    assert not peek(ns, "secnet:" + NET_A)          # a goto is not the jump
    run(ns, "iptables", "-A", "FORWARD", "-j", CHAIN)
    assert peek(ns, "secnet:" + NET_A)
    run(ns, "iptables", "-A", CHAIN, "-o", "sn-x", "-m", "comment", "--comment", "secnet:" + NET_A, "-j", "DROP")
    assert not peek(ns, "secnet:" + NET_A)          # the network has a rule already: read the table
    assert peek(ns, "secnet:" + NET_B)
    assert not peek(ns, "secnet:" + NET_B, "ip6tables")   # IPv6: no table yet


def test_a_new_network_is_written_without_reading_the_table_and_like_the_read_path(ns, monkeypatch):
    docker_user(ns)
    fw = Counting()
    with netns(ns):
        assert fw.ensure("sn-a", NET_A)
    assert fw.reads == 0
    quick = {b: run(ns, b, "-S", CHAIN) for b in ("iptables", "ip6tables")}
    assert quick["iptables"].count("secnet:" + NET_A) == 4
    with netns(ns):
        fw.remove("sn-a", NET_A)
        assert run(ns, "iptables", "-S", CHAIN).count("secnet:") == 0
        monkeypatch.setattr(iptpeek, "chain_tail", lambda *args: None)
        assert fw.ensure("sn-a", NET_A)
        assert fw.reads == 2 + 2                     # remove's reads, then the read path's
        assert not fw.ensure("sn-a", NET_A)          # complete: nothing rewritten
    assert {b: run(ns, b, "-S", CHAIN) for b in ("iptables", "ip6tables")} == quick


def _chain(ns: str) -> list:
    """DOCKER-USER's rules, each as its network's tag or the rule's text."""
    rules = [line for line in run(ns, "iptables", "-S", CHAIN).splitlines() if line.startswith("-A")]
    return [("ours:" + line.split("secnet:")[1].split('"')[0][:1]) if "secnet:" in line else line[len("-A " + CHAIN) + 1:]
            for line in rules]


@pytest.mark.parametrize("path", ["netlink", "read"])
def test_rules_go_below_the_admins_and_above_dockers_return(ns, monkeypatch, path):
    # Docker's documented place for the admin's own rules is DOCKER-USER, above its closing
    # RETURN: a network made after such a rule must not jump ahead of it (U18-F7)
    docker_user(ns, closing_return=True)
    run(ns, "iptables", "-I", CHAIN, "-s", "10.231.0.9/32", "-j", "DROP")
    fw = Counting()
    if path == "read":
        monkeypatch.setattr(iptpeek, "chain_tail", lambda *args: None)
    with netns(ns):
        assert fw.ensure("sn-a", NET_A)
        run(ns, "iptables", "-I", CHAIN, "-s", "10.231.0.10/32", "-j", "DROP")
        assert fw.ensure("sn-b", NET_B)
    assert fw.reads == (0 if path == "netlink" else 2 * 2)
    admin = ["-s 10.231.0.10/32 -j DROP", "-s 10.231.0.9/32 -j DROP"]
    assert _chain(ns) == admin + ["ours:a"] * 4 + ["ours:b"] * 4 + ["-j RETURN"]
    assert run(ns, "ip6tables", "-S", CHAIN).splitlines()[-1] == f"-A {CHAIN} -j RETURN"


def test_rules_an_older_secnet_put_above_the_admins_are_moved_below(ns):
    docker_user(ns, closing_return=True)
    fw = Counting()
    with netns(ns):
        assert fw.ensure("sn-a", NET_A)
        ours = run(ns, "iptables", "-S", CHAIN).splitlines()[1:5]
        run(ns, "iptables", "-F", CHAIN)
        for line in ["-A DOCKER-USER -s 10.231.0.9/32 -j DROP", "-A DOCKER-USER -j RETURN"]:
            run(ns, "iptables", *line.split())
        for line in reversed(ours):                  # the old layout: ours at the top
            run(ns, "iptables", "-I", CHAIN, "1", *shlex.split(line)[2:])
        assert _chain(ns)[0] == "ours:a"
        assert fw.ensure("sn-a", NET_A)              # rewritten below the admin's rule
        assert not fw.ensure("sn-a", NET_A)
    assert _chain(ns) == ["-s 10.231.0.9/32 -j DROP"] + ["ours:a"] * 4 + ["-j RETURN"]


@pytest.mark.parametrize("path", ["netlink", "read"])
def test_the_bridges_traffic_walks_dockers_isolation_chain_when_it_exists(ns, monkeypatch, path):
    # Docker's --internal networks keep their traffic in with rules of this chain; FORWARD
    # jumps to it after DOCKER-USER, where secnet accepts (U18-F6)
    docker_user(ns)
    run(ns, "iptables", "-N", ISOLATION)
    run(ns, "iptables", "-A", ISOLATION, "!", "-s", "10.231.9.0/24", "-o", "br-int", "-j", "DROP")
    run(ns, "iptables", "-A", ISOLATION, "-j", "RETURN")
    fw = Counting()
    if path == "read":
        monkeypatch.setattr(iptpeek, "chain_tail", lambda *args: None)
    with netns(ns):
        assert fw.ensure("sn-a", NET_A)
    rules = [line for line in run(ns, "iptables", "-S", CHAIN).splitlines() if "secnet:" in line]
    assert [line.split()[-1] for line in rules] == [ISOLATION, ISOLATION, "ACCEPT", "ACCEPT", "DROP", "DROP"]
    assert [line.split()[2] for line in rules[:2]] == ["-i", "-o"]
    assert "-j " + ISOLATION not in run(ns, "ip6tables", "-S", CHAIN)      # no such chain there
    assert _intact(ns, NET_A) and _intact(ns, NET_A, binary="ip6tables")
    with netns(ns):
        assert not fw.ensure_all({NET_A: "sn-a"})
        run(ns, "ip6tables", "-N", ISOLATION)         # Docker's ip6tables support came on later
        assert not _intact(ns, NET_A, binary="ip6tables")
        assert fw.ensure_all({NET_A: "sn-a"}) == {NET_A}
    assert run(ns, "ip6tables", "-S", CHAIN).count("-j " + ISOLATION) == 2


def test_ensure_all_repairs_every_network_with_one_read_per_binary(ns):
    fw = Counting()
    with netns(ns):
        fw.ensure("sn-a", NET_A)   # no chain yet: the read path makes it and the jump
        fw.ensure("sn-b", NET_B)
        whole = {b: run(ns, b, "-S") for b in ("iptables", "ip6tables")}
        run(ns, "iptables", "-F", CHAIN)
        run(ns, "ip6tables", "-D", "FORWARD", "-j", CHAIN)
        fw.reads = 0
        assert fw.ensure_all({NET_A: "sn-a", NET_B: "sn-b"}) == {NET_A, NET_B}
        assert fw.reads == 2
        assert fw.ensure_all({NET_A: "sn-a", NET_B: "sn-b"}) == set()
    assert {b: run(ns, b, "-S") for b in ("iptables", "ip6tables")} == whole


def _intact(ns: str, *nets: str, binary: str = "iptables", ordered: bool = False) -> bool:
    """iptpeek.intact for ``nets``; ``ordered``: also that no foreign rule sits below theirs."""
    with netns(ns):
        return iptpeek.intact(binary, CHAIN, ["secnet:" + n for n in nets], dockerfw._verdicts,
                              dockerfw.COMMENT_PREFIX if ordered else "")


def test_the_repair_reads_no_table_while_every_rule_is_intact_and_repairs_what_is_not(ns):
    """ensure_all (the forward repair, woken by every FORWARD change) skips ``iptables -S``
    for a binary whose rules netlink shows intact; a rule deleted, a DROP turned into an
    ACCEPT under our comment, an extra rule or FORWARD's jump gone: read and repaired."""
    docker_user(ns)
    fw = Counting()
    nets = {NET_A: "sn-a", NET_B: "sn-b"}
    with netns(ns):
        for nid, bridge in nets.items():
            fw.ensure(bridge, nid)
        fw.reads = 0
        assert fw.ensure_all(nets) == set() and fw.reads == 0
    assert _intact(ns, NET_A, NET_B) and _intact(ns, NET_A, NET_B, binary="ip6tables")
    tag = "secnet:" + NET_A
    breakages = [("-D", CHAIN, "-o", "sn-a", "-m", "comment", "--comment", tag, "-j", "DROP"),
                 ("-R", CHAIN, "4", "-i", "sn-a", "-m", "comment", "--comment", tag, "-j", "ACCEPT"),
                 ("-I", CHAIN, "1", "-i", "sn-a", "-m", "comment", "--comment", tag, "-j", "ACCEPT"),
                 ("-D", "FORWARD", "-j", CHAIN)]
    for broken in breakages:
        rules = run(ns, "iptables", "-S", CHAIN)
        run(ns, "iptables", *broken)
        assert not _intact(ns, NET_A, NET_B), broken
        assert _intact(ns, NET_B, binary="ip6tables")
        with netns(ns):
            fw.reads = 0
            fw.ensure_all(nets)
        assert fw.reads == 1, broken                 # iptables read; ip6tables intact, not read
        if broken[1] != "FORWARD":   # the extra and the changed rule go only with the read path's rewrite
            assert run(ns, "iptables", "-S", CHAIN).count(tag) >= 4
        run(ns, "iptables", "-F", CHAIN)
        for line in rules.splitlines()[1:]:
            run(ns, "iptables", *line.replace('"', "").split())
        if broken[1] == "FORWARD":
            run(ns, "iptables", "-I", "FORWARD", "1", "-j", CHAIN)
        assert _intact(ns, NET_A, NET_B), broken


def test_an_admins_rule_inserted_below_ours_later_is_moved_above_by_the_repair(ns):
    # ``iptables -I DOCKER-USER N`` with N past the top puts the admin's rule below a
    # network's: the repair (woken by that change) must not call the rules intact
    docker_user(ns, closing_return=True)
    fw = Counting()
    nets = {NET_A: "sn-a", NET_B: "sn-b"}
    with netns(ns):
        for nid, bridge in nets.items():
            fw.ensure(bridge, nid)
    assert _chain(ns) == ["ours:a"] * 4 + ["ours:b"] * 4 + ["-j RETURN"]
    assert _intact(ns, NET_A, NET_B, ordered=True)
    run(ns, "iptables", "-I", CHAIN, "3", "-s", "10.231.0.9/32", "-j", "DROP")   # inside a's rules
    assert not _intact(ns, NET_A, NET_B, ordered=True)
    assert _intact(ns, NET_A, NET_B)                 # counts alone do not see the order
    with netns(ns):
        assert fw.ensure_all(nets) == {NET_A}
    assert _chain(ns) == ["-s 10.231.0.9/32 -j DROP"] + ["ours:b"] * 4 + ["ours:a"] * 4 + ["-j RETURN"]
    assert _intact(ns, NET_A, NET_B, ordered=True)
    run(ns, "iptables", "-A", CHAIN, "-s", "10.231.0.8/32", "-j", "DROP")    # after RETURN: never runs
    assert _intact(ns, NET_A, NET_B, ordered=True)

