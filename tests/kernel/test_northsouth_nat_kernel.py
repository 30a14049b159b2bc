"""Published ports from another Docker network keep the client's address, on every backend.

The lab's outside namespace stands for a container on another Docker bridge
network of the same host: the host holds the masquerade rule Docker's bridge
driver writes for such a network (iptables nat POSTROUTING
``-s SUBNET ! -o ITS_BRIDGE -j MASQUERADE``, priority srcnat), here for the
outside link ``snup0``. A flow from it to a published port leaves the host
through secnet's bridge, so that rule matches it; secnet's NAT must keep the
client's address anyway (hairpin and loopback flows stay masqueraded), or a
CIDR-source rule naming the client's subnet could never match.
"""
from __future__ import annotations

import socket
import subprocess

import pytest

from nsfixtures import BRIDGE, GATEWAY4, HOST4, HOST6, OUTSIDE4, OUTSIDE6, UPLINK
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import ns_socket

pytestmark = pytest.mark.kernel

PUBLISHED = 18180
CPORT = 9100
DOCKER_LIKE = f"""table inet sn-test-dockerlike {{
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.237.0.0/24 oifname != "{UPLINK}" masquerade
    ip6 saddr fd00:237::/64 oifname != "{UPLINK}" masquerade
  }}
}}
"""


def _docker_like_masquerade(lab) -> None:
    """Docker's masquerade rule for the outside's network (gone with the lab's namespace)."""
    subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], input=DOCKER_LIKE,
                   text=True, check=True, timeout=20)


def _seen_source(server, client, dst: str, port: int, family: int = 4):
    """The source address ``server`` sees on a datagram ``client`` sends to ``dst``:``port``
    (published to ``server``'s CPORT); None when nothing arrives within a second."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    with ns_socket(server.ns, fam, socket.SOCK_DGRAM) as srv, \
            ns_socket(client.ns, fam, socket.SOCK_DGRAM) as cli:
        srv.bind(("0.0.0.0" if family == 4 else "::", CPORT))
        srv.settimeout(1.0)
        cli.sendto(b"who", (dst, port))
        try:
            return srv.recvfrom(64)[1][0]
        except socket.timeout:
            return None


def test_a_client_of_another_network_keeps_its_address(lab):
    web, api = lab.add(2)
    _docker_like_masquerade(lab)
    lab.exec("sysctl", "-qw", f"net.ipv4.conf.{BRIDGE}.route_localnet=1")   # as the driver does
    # (the rule lets web's hairpin in: it is east-west on the container port)
    lab.apply(f"web->api:udp/{CPORT}", {web: "web", api: "api"},
              published={api: (("udp", "", PUBLISHED, CPORT),)})
    assert _seen_source(api, lab.outside, HOST4, PUBLISHED) == OUTSIDE4
    assert _seen_source(api, lab.outside, HOST6, PUBLISHED, 6) == OUTSIDE6
    # hairpin and the host's loopback stay masqueraded to the gateway (replies via the host)
    assert _seen_source(api, web, HOST4, PUBLISHED) == GATEWAY4
    assert _seen_source(api, lab.host_box, "127.0.0.1", PUBLISHED) == GATEWAY4


def test_a_cidr_rule_naming_the_clients_subnet_matches(lab):
    web, api = lab.add(2)
    _docker_like_masquerade(lab)
    published = {api: (("udp", "", PUBLISHED, CPORT),)}
    lab.apply(f"10.237.0.0/24->api:udp/{CPORT}", {web: "web", api: "api"}, published=published)
    assert _seen_source(api, lab.outside, HOST4, PUBLISHED) == OUTSIDE4
    lab.update(f"10.238.0.0/24->api:udp/{CPORT}")
    assert _seen_source(api, lab.outside, HOST4, PUBLISHED) is None
