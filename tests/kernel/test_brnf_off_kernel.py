"""The policy holds when the host turns bridge netfilter's global switches off.

nftables judges bridged IP traffic in its ``inet`` table only because br_netfilter
passes it there (net/bridge/br_netfilter_hooks.c, ``br_nf_pre_routing``: skipped when
neither ``net.bridge.bridge-nf-call-iptables`` nor the bridge's own
``nf_call_iptables`` option, IFLA_BR_NF_CALL_IPTABLES, is on). Hosts that set the
sysctl to 0 exist (hypervisor guides recommend it); secnet turns the bridge's own
option on, so its networks do not depend on the host's setting. The eBPF backend does
not judge there, and must hold alike.
"""
from __future__ import annotations

import pytest

import json

from nsfixtures import BRIDGE, BRIDGE_MAC, GATEWAY4, GATEWAY6, NET_ID, InNamespace, lab  # noqa: F401 (fixture)
from packets import probe_tcp, probe_udp
from plugin.kernel.links import Netlink

pytestmark = pytest.mark.kernel
SWITCHES = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


def test_policy_holds_with_the_hosts_bridge_netfilter_switches_off(lab):
    web, api, db = lab.add(3)
    lab.exec("sysctl", "-qw", *(f"{s}=0" for s in SWITCHES))
    try:
        lab.apply("web->api:tcp/8080", {web: "web", api: "api", db: "db"}, intra="deny")
        for fam in (4, 6):
            assert probe_tcp(web, api.ip(fam), 8080) == "ok", f"{lab.backend_name}: allowed flow, IPv{fam}"
            assert probe_tcp(db, api.ip(fam), 8080) == "timeout", f"{lab.backend_name}: db->api passed, IPv{fam}"
            assert probe_tcp(web, api.ip(fam), 5432) == "timeout", f"{lab.backend_name}: web->api:5432, IPv{fam}"
            assert probe_udp(api, web.ip(fam)) == "timeout", f"{lab.backend_name}: api->web udp, IPv{fam}"
    finally:
        lab.exec("sysctl", "-qw", *(f"{s}=1" for s in SWITCHES))


def test_a_bridge_whose_switches_are_turned_off_is_drift_and_repaired(lab):
    web, api, db = lab.add(3)
    lab.exec("sysctl", "-qw", *(f"{s}=0" for s in SWITCHES))
    try:
        lab.apply("web->api:tcp/8080", {web: "web", api: "api", db: "db"}, intra="deny")
        lab.exec("ip", "link", "set", BRIDGE, "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables", "0")
        if lab.backend_name == "nftables":
            assert [p for p in lab.drift() if "nf_call" in p] == [
                f"bridge {BRIDGE}: nf_call_iptables off (its traffic would skip the inet table)",
                f"bridge {BRIDGE}: nf_call_ip6tables off (its traffic would skip the inet table)"]
            lab.repair()
        assert lab.drift() == []
        for fam in (4, 6):
            assert probe_tcp(db, api.ip(fam), 8080) == "timeout", f"{lab.backend_name}: db->api passed, IPv{fam}"
            assert probe_tcp(web, api.ip(fam), 8080) == "ok", f"{lab.backend_name}: allowed flow, IPv{fam}"
    finally:
        lab.exec("sysctl", "-qw", *(f"{s}=1" for s in SWITCHES))


def _switches(lab) -> tuple:
    link = json.loads(lab.exec("ip", "-j", "-d", "link", "show", BRIDGE).stdout)[0]
    data = link["linkinfo"]["info_data"]
    return data["nf_call_iptables"], data["nf_call_ip6tables"]


def test_a_bridge_made_with_its_backends_options_needs_no_second_look(lab):
    """CreateNetwork's path: the link writer makes the bridge with the backend's
    ``bridge_options`` in its ``link add``, and the backend, told ``bridge_made``, does not
    read it back (nftables: no rtnetlink socket of its hooks opened at all). With the host's
    switches off the policy holds from the first packet. eBPF asks for no switch (its tc
    programs judge; the switches would only send its traffic through iptables as well)."""
    lab.exec("ip", "link", "del", BRIDGE)   # the lab's own bridge goes; the link writer makes it
    links = InNamespace(lab.host, Netlink)
    try:
        assert links.ensure_bridge(BRIDGE, NET_ID, 1500, [f"{GATEWAY4}/24", f"{GATEWAY6}/64"],
                                   options=lab.backend.bridge_options) is True
    finally:
        links.shutdown()
    lab.exec("ip", "link", "set", BRIDGE, "address", BRIDGE_MAC)
    web, api, db = lab.add(3)
    lab.exec("sysctl", "-qw", *(f"{s}=0" for s in SWITCHES))
    try:
        lab.apply("web->api:tcp/8080", {web: "web", api: "api", db: "db"}, intra="deny", bridge_made=True)
        assert _switches(lab) == ((1, 1) if lab.backend_name == "nftables" else (0, 0))
        if lab.backend_name == "nftables":
            assert lab.backend.obj.hooks._ipr is None, "the hooks read the bridge all the same"
        for fam in (4, 6):
            assert probe_tcp(db, api.ip(fam), 8080) == "timeout", f"{lab.backend_name}: db->api passed, IPv{fam}"
            assert probe_tcp(web, api.ip(fam), 8080) == "ok", f"{lab.backend_name}: allowed flow, IPv{fam}"
        assert lab.drift() == []
    finally:
        lab.exec("sysctl", "-qw", *(f"{s}=1" for s in SWITCHES))
