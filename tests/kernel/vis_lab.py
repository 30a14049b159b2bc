"""A throwaway lab for the visibility kernel tests: a "host" namespace with a
br_netfilter bridge and secnet's tables, and "container" namespaces plugged
into it (10.224.250.0/24, fd00:224:fa::/64: this suite's own addresses).

Everything lives in namespaces named ``snvis-<uuid6>...``, deleted in the
finalizer (the tables go with the host namespace); no packet leaves them.
"""
from __future__ import annotations

import socket
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from plugin.kernel import netns
from segmentation.backends import nftables as nft
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import parse_network_options

NET_ID = "715ab1e0" + "0" * 56
BRIDGE = "snvisbr0"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
    return res


@dataclass(frozen=True)
class Box:
    ns: str
    veth: str
    mac: str
    ip4: str
    ip6: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.ns}"

    def port(self, segment=None, quarantine=None) -> nft.Port:
        return nft.Port(endpoint_id=self.veth, name=self.veth, mac=self.mac, ipv4=self.ip4,
                        ipv6=self.ip6, segment=segment, quarantine=quarantine)

    def socket(self, family=socket.AF_INET, kind=socket.SOCK_DGRAM, proto=0) -> socket.socket:
        return netns.run_in(self.path, socket.socket, family, kind, proto)


class VisLab:
    def __init__(self, tmp_path):
        self.host = f"snvis-{uuid.uuid4().hex[:6]}"
        self.names: list = []
        self.boxes: list = []
        wrapper = tmp_path / "nft-in-lab"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.host} nft "$@"\n')
        wrapper.chmod(0o755)
        self.runner = nft.NftRunner(binary=str(wrapper))
        self._netns(self.host)
        sh("ip", "-n", self.host, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", self.host, "link", "set", BRIDGE, "up")
        sh("ip", "netns", "exec", self.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1",
           "net.bridge.bridge-nf-call-ip6tables=1")

    @property
    def host_path(self) -> str:
        return f"/run/netns/{self.host}"

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def add(self, n: int) -> list:
        for _ in range(n):
            i = len(self.boxes)
            box = Box(ns=f"{self.host}-{i}", veth=f"snvisv{i}", mac=f"02:42:0a:e0:fa:{10 + i:02x}",
                      ip4=f"10.224.250.{10 + i}", ip6=f"fd00:224:fa::{10 + i:x}")
            self._netns(box.ns)
            sh("ip", "-n", self.host, "link", "add", box.veth, "type", "veth", "peer", "name", "eth0",
               "netns", box.ns)
            sh("ip", "-n", self.host, "link", "set", box.veth, "master", BRIDGE, "up")
            sh("ip", "-n", box.ns, "link", "set", "eth0", "address", box.mac)
            sh("ip", "-n", box.ns, "addr", "add", f"{box.ip4}/24", "dev", "eth0")
            sh("ip", "-n", box.ns, "addr", "add", f"{box.ip6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", box.ns, "link", "set", "eth0", "up")
            self.boxes.append(box)
        return self.boxes[-n:]

    def apply(self, rules: str, ports: list):
        """Compile ``rules`` over ``ports`` and apply both tables in the host namespace."""
        options = parse_network_options({"secnet.allow": rules})
        members = [Member(p.endpoint_id, p.segment, p.ipv4, p.ipv6, p.quarantine) for p in ports]
        compiled = compile_policy(options, members)
        self.runner.apply(nft.render_network(NET_ID, BRIDGE, compiled, ports))
        return compiled

    def ifindex(self, name: str) -> int:
        return int(sh("ip", "netns", "exec", self.host, "cat", f"/sys/class/net/{name}/ifindex").stdout)

    def close(self) -> None:
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def vislab(tmp_path):
    lab = VisLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
