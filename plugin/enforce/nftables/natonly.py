"""The nftables part of an eBPF network: NAT only (used through :class:`NatTable`).

Policy is the programs' job; what a bridge port cannot do stays in
nftables, in the network's inet table ``secnet_<network-id[:12]>``:

* published ports (DNAT in prerouting and output, from the maps ``pub4``/
  ``pub6``), hairpin and egress masquerade -- the very chains of the
  nftables backend (``nft_northsouth.nat_chains``), so both backends NAT alike;
* the mark that Docker's DOCKER-USER chain accepts (plugin/enforce/hostfw/dockerfw.py) on
  what the stack forwards *into* the bridge: the programs judge it after
  FORWARD, on the container's veth, so FORWARD must let it reach them.
  (What leaves the bridge is marked by ``from_container`` itself.)

No filter chain here drops anything: the verdicts are the programs'.
"""
from __future__ import annotations

from typing import Iterable

from plugin.kernel.marks import HOST_DENIED_MARK, LEARNED_FLOW_MARK, PASSED_MARK

from . import northsouth as ns
from .elements import ports_elements
from .ruleset import element_text
from .runner import TABLE_PREFIX, NftError, NftRunner



def table_name(network_id: str) -> str:
    return TABLE_PREFIX + network_id[:12]


def _pub_elements(table: str, ports: Iterable) -> list:
    """``add element`` lines of the published-port maps (the nftables backend's encoding)."""
    elements = ports_elements(ports)
    lines = []
    for name in ("pub4", "pub6"):
        items = elements.get(name) or {}
        if items:
            body = ", ".join(element_text(name, e, v) for e, v in sorted(items.items()))
            lines.append(f"add element inet {table} {name} {{ {body} }}")
    return lines


def render_nat(network_id: str, bridge: str, subnets: Iterable[str], internal: bool,
               ports: Iterable) -> str:
    """Script that atomically replaces the network's inet table with its NAT.

    ``ports``: plugin.enforce.backend.Port (their ``published`` mappings).
    """
    t = table_name(network_id)
    lines = [f"table inet {t} {{ }}", f"delete table inet {t}", f"table inet {t} {{"]
    lines += ns.pub_maps()
    lines += ns.nat_chains(bridge, subnets, internal)
    lines += [
        "  chain forward {",
        "    type filter hook forward priority filter - 5; policy accept;",
        f'    oifname "{bridge}" meta mark set meta mark or {PASSED_MARK:#x}',
        # a new flow the program admitted by a learned DNS address (bpf LEARNED_MARK):
        # the connection remembers it for conntrack pruning (plugin.kernel.conntrack)
        f"    ct state new meta mark & {LEARNED_FLOW_MARK:#x} == {LEARNED_FLOW_MARK:#x}"
        f" ct mark set ct mark or {LEARNED_FLOW_MARK:#x}",
        "  }",
        # a member's broadcast or multicast whose copy to the host the program denied
        # (counted, reported there): its copies for members went on (bpf group_copy)
        "  chain host_in {",
        "    type filter hook input priority filter - 5; policy accept;",
        f'    iifname "{bridge}" meta mark & {HOST_DENIED_MARK:#x} == {HOST_DENIED_MARK:#x} drop',
        "  }",
        "}",
    ]
    lines += _pub_elements(t, ports)
    return "\n".join(lines) + "\n"


def render_delete(network_id: str) -> str:
    t = table_name(network_id)
    return f"table inet {t} {{ }}\ndelete table inet {t}\n"


class NatTable:
    """The NAT-only nft table of a network whose policy another datapath enforces (eBPF):
    ``apply(spec, ports)`` writes it whole (one transaction), ``remove(network_id)``."""

    def __init__(self, runner: NftRunner = None):
        self.runner = runner or NftRunner()

    def apply(self, spec, ports) -> None:
        self.runner.apply(render_nat(spec.id, spec.bridge, spec.subnets, spec.internal, list(ports)))

    def remove(self, network_id: str) -> None:
        self.runner.apply(render_delete(network_id))

    def drift(self, network_id: str) -> list:
        """One short line when the network's NAT table is not in the kernel, or lacks one of
        the published-port maps; [] when it is there. A ruleset flush (``nft flush ruleset``,
        as ``systemctl restart nftables`` does) takes it, and the eBPF programs cannot
        publish a port without it (U20-F3). Elements are not compared: :meth:`apply`
        writes the table whole, and a repair rewrites it."""
        table = table_name(network_id)
        try:
            data = self.runner.list_json("table", "inet", table, terse=True)
        except NftError as exc:
            return [f"nat table {table} missing ({str(exc).splitlines()[0][:100]})"]
        maps = {o["map"]["name"] for o in data.get("nftables", []) if "map" in o}
        return [f"nat table {table}: no map {name}" for name in ("pub4", "pub6") if name not in maps]
