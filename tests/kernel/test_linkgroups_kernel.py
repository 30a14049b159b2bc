"""The interface groups of a namespace's links read raw (plugin.kernel.linkgroups), and the
nftables datapath's port groups that use them (plugin.enforce.nftables.portlinks), on the
real kernel in a throwaway namespace."""
from __future__ import annotations

import subprocess

from nsfixtures import InNamespace
from plugin.enforce.nftables.portlinks import DUMP_FROM, PortGroups
from plugin.kernel.linkgroups import LinkGroups
from plugin.kernel.links import port_group

PAIRS = DUMP_FROM + 8   # more ports than one request each: the dump path


def _make(netns) -> list:
    """A bridge ``br-lg`` with PAIRS veth ports (host sides ``lga<i>``, group 0) and a
    pair off the bridge, ``lgo0`` in group 0x1234; returns the port names."""
    cmds = ["link add br-lg type bridge", "link add lgo0 group 4660 type veth peer name lgo1"]
    cmds += [f"link add lga{i} type veth peer name lgb{i}" for i in range(PAIRS)]
    cmds += [f"link set lga{i} master br-lg" for i in range(PAIRS)]
    subprocess.run(["ip", "-n", netns.name, "-batch", "-"], input="\n".join(cmds) + "\n", text=True,
                   check=True, capture_output=True)
    return [f"lga{i}" for i in range(PAIRS)]


def _groups_by_ip(netns) -> dict:
    return {link["ifname"]: 0 if link.get("group") in (None, "default") else int(link["group"])
            for link in netns.links()}


def test_the_dump_gives_every_link_with_its_group(netns):
    _make(netns)
    netns.ip("link", "set", "lga3", "group", "77")
    links = InNamespace(netns.name, LinkGroups)
    try:
        got = links.read()
        assert got == _groups_by_ip(netns)          # every link, as ip(8) lists them
        assert got["lgo0"] == 0x1234 and got["lgo1"] == 0 and got["lga3"] == 77 and got["lo"] == 0
        assert links.read() == got                  # the kept socket answers again
    finally:
        links.shutdown()


def test_port_groups_set_and_check_many_ports_through_the_dump(netns):
    names = _make(netns)
    groups = InNamespace(netns.name, PortGroups)
    try:
        assert groups.ensure("br-lg", [(n,) for n in names] + [("lga-gone",)]) == PAIRS
        now = _groups_by_ip(netns)
        assert {now[n] for n in names} == {port_group("br-lg")}
        assert groups.strays("br-lg", names) == []
        netns.ip("link", "set", "lga5", "group", "0")
        assert groups.strays("br-lg", names) == [f"port lga5: interface group 0x0, not {port_group('br-lg'):#x}"]
        assert groups.ensure("br-lg", [(n,) for n in names]) == 1   # only the one that differs
        assert groups.strays("br-lg", names) == []
    finally:
        groups.shutdown()
