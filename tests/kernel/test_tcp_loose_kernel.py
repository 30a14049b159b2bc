"""A first TCP ACK follows the host's ``net.netfilter.nf_conntrack_tcp_loose`` on both
backends (issue 13: the same verdicts).

nftables leaves it to conntrack: with the sysctl at 1 (the default) an ACK without a SYN
opens a flow (picked up in its middle), at 0 it is ``invalid`` (nf_conntrack_proto_tcp.c,
``tcp_new``). The eBPF datapath cannot read a sysctl: the daemon copies it into the
network's ``settings`` map (``strict_tcp``) when it writes the map, and a repair after a
drift check writes it again when the host's value changed.
"""
from __future__ import annotations

import pytest

from nsfixtures import lab  # noqa: F401 (fixture)
from test_tcp_new_kernel import ACK, received, send_tcp

pytestmark = pytest.mark.kernel
SYSCTL = "net.netfilter.nf_conntrack_tcp_loose"


def _ack_passes(lab, web, api, sport: int) -> bool:
    return received(api, lambda: send_tcp(web, api, 4, sport, 8080, ACK, b"DATA"), 4) == {sport}


def test_a_first_ack_follows_nf_conntrack_tcp_loose(lab):
    web, api = lab.add(2)
    lab.exec("modprobe", "nf_conntrack", check=False)
    lab.exec("sysctl", "-qw", f"{SYSCTL}=0")
    try:
        lab.apply("web->api:tcp/8080", {web: "web", api: "api"})
        assert not _ack_passes(lab, web, api, 47000), f"{lab.backend_name}: an ACK opened a flow (loose=0)"
        assert lab.dropped("invalid") == 1
        lab.exec("sysctl", "-qw", f"{SYSCTL}=1")
        if lab.backend_name == "ebpf":
            assert any(line.startswith("settings:") for line in lab.drift()), lab.drift()
            lab.repair()
        assert lab.drift() == []
        assert _ack_passes(lab, web, api, 47001), f"{lab.backend_name}: an ACK opened no flow (loose=1)"
    finally:
        lab.exec("sysctl", "-qw", f"{SYSCTL}=1")
