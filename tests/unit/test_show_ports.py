"""`secnet show` lists each member's published ports (U18-F1): Docker shows none for
a remote driver (docs/deviations.md), and `-p 8080` / `-P` get a host port that
secnet chose. JSON rows and text in Docker's notation, from the saved state (so
the same on both backends). (e2e: tests/e2e/test_published_families_e2e.py.)"""
from __future__ import annotations

from plugin.cli.format import ports_text
from plugin.cli.main import _print_show
from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.backend import Counters
from plugin.observe.views import network_view, published_rows
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import parse_network_options

NID = "ab" * 32


def ep(n, ports, ipv6=True, segment="web", quarantine=None):
    return EndpointRecord(id=str(n) * 64, network_id=NID, veth_host=f"snv{n}", veth_peer=f"snp{n}",
                          mac="02:00:00:00:00:01", ipv4=f"10.239.9.{n + 1}/24",
                          ipv6=f"fd00:239:9::{n + 1}/64" if ipv6 else None, segment=segment,
                          quarantine=quarantine, container=f"c{n}", ports=ports)


def test_rows_follow_the_families_a_binding_is_published_on():
    ports = (("tcp", "", 45733, 8080), ("udp", "0.0.0.0", 45000, 53), ("tcp", "::", 45001, 80),
             ("tcp", "127.0.0.1", 45002, 8080))
    rows = published_rows(ep(1, ports))
    assert [(r["host_ip"], r["host_port"], r["container_port"], r["proto"]) for r in rows] == [
        ("0.0.0.0", 45000, 53, "udp"), ("::", 45001, 80, "tcp"),
        ("0.0.0.0", 45733, 8080, "tcp"), ("127.0.0.1", 45002, 8080, "tcp"), ("::", 45733, 8080, "tcp")]
    # an IPv4-only member: a binding without HostIP is published on IPv4 only, [::] on nothing
    four = published_rows(ep(2, (("tcp", "", 45733, 8080), ("tcp", "::", 45001, 80)), ipv6=False))
    assert [(r["host_ip"], r["host_port"]) for r in four] == [("0.0.0.0", 45733)]
    assert published_rows(ep(3, ())) == []


def test_text_is_dockers_notation():
    rows = published_rows(ep(1, (("tcp", "", 45733, 8080), ("udp", "127.0.0.1", 45000, 53))))
    assert ports_text(rows) == "127.0.0.1:45000->53/udp, 0.0.0.0:45733->8080/tcp, [::]:45733->8080/tcp"
    assert ports_text([]) == ""


class _Reconciler:
    def __init__(self, state):
        self.state = state

    def compiled(self, net):
        members = [Member(e.id, e.segment, e.ipv4.split("/")[0], None, e.quarantine)
                   for e in self.state.endpoints(net.id)]
        return compile_policy(net.options, members)

    def counters(self, net):
        return Counters()


def test_show_prints_the_ports_on_the_members_line(tmp_path, capsys):
    state = State(str(tmp_path / "state"))
    try:
        state.put_network(NetworkRecord(id=NID, bridge="sn-x", mtu=1500, options=parse_network_options({})))
        state.put_endpoints([ep(1, (("tcp", "", 45733, 8080),)), ep(2, ())])
        data = network_view(state, _Reconciler(state), state.get_network(NID))
    finally:
        state.close()
    (seg,) = [s for s in data["segments"] if s["name"] == "web"]
    by_name = {m["container"]: m for m in seg["members"]}
    assert by_name["c1"]["ports"] == [
        {"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 45733, "container_port": 8080},
        {"proto": "tcp", "host_ip": "::", "host_port": 45733, "container_port": 8080}]
    assert by_name["c2"]["ports"] == []
    _print_show(data)
    lines = capsys.readouterr().out.splitlines()
    (c1,) = [line for line in lines if line.strip().startswith("c1 ")]
    assert c1.endswith("  ports 0.0.0.0:45733->8080/tcp, [::]:45733->8080/tcp"), c1
    (c2,) = [line for line in lines if line.strip().startswith("c2 ")]
    assert "ports" not in c2
