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

from nsfixtures import BRIDGE, lab  # noqa: F401 (fixture)
from packets import probe_tcp, probe_udp

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
