"""Endpoints never outlive their containers (issue 10, the fourth kind found):
a container removed (or stopped, U13-F1) while the daemon was down leaves
Docker no reason to call DeleteEndpoint again. Its row, veth, rules and held
host port must go when the daemon is back, or the next container with the
same -p or the same address cannot start or is judged (and logged) as the old
one."""
from __future__ import annotations

import json
import re
import socket

import pytest

import flow_helpers as fh
import helpers as h
import ns_helpers as n
import vis_helpers as v

SEG = "secnet.segment"


@pytest.mark.exclusive
def test_a_container_removed_while_the_daemon_was_down_leaves_nothing(make_network, run_container):
    net = fh.network(make_network, "sn-stale", opts={"secnet.allow": "web->api:tcp/8080"}, ipv6=False)
    addr = fh.host_in(net.subnet, 50)
    port = n.free_port(proto=("tcp",))
    api = run_container(net, "api", labels={SEG: "api"}, extra=["--ip", addr, "-p", f"{port}:8080"])
    web = run_container(net, "web", labels={SEG: "web"})
    h.plugin_kill()
    try:
        h.docker("rm", "-f", api.name, timeout=180)
    finally:
        h.plugin_start()
    h.wait_until(lambda: not h.state_endpoint_rows(endpoint_id=api.endpoint_id), 15,
                 "the removed container's endpoint to be dropped")
    assert h.links_owned_by(api.endpoint_id) == []
    new = run_container(net, "api", labels={SEG: "api"}, extra=["--ip", addr, "-p", f"{port}:8080"])
    assert new.ip == addr
    n.reaches(n.HOST, "127.0.0.1", port, within=5)              # the held port went with the old one
    assert h.tcp(web, new, 8080)


def _bpf_entries(net: h.Network, name: str) -> list:
    """(key, value) bytes of the network's pinned eBPF map ``name``."""
    out = h.run(["bpftool", "-j", "map", "dump", "pinned", f"/sys/fs/bpf/secnet/{net.id[:12]}/{name}"]).stdout
    return [(bytes(int(b, 16) for b in e["key"]), bytes(int(b, 16) for b in e["value"]))
            for e in json.loads(out or "[]")]


def _datapath_holds(net: h.Network, backend: str, veth: str, mac: str, addr: str) -> bool:
    """Whether the network's datapath still holds anything of the endpoint (veth
    ``veth``, ``mac``, IPv4 ``addr``): nftables: its ``ifname . MAC . IP``
    anti-spoofing elements, its address in the address -> identity map; eBPF: its
    ``endpoints`` entry (the value holds the MAC) and its ``members`` entry."""
    if backend == "nftables":
        table = h.run(["nft", "list", "table", "inet", f"secnet_{net.id[:12]}"]).stdout
        ruleset = h.run(["nft", "list", "ruleset"]).stdout
        return veth in ruleset or re.search(rf"(?<![\d.]){re.escape(addr)}(?![\d.])", table) is not None
    raw_mac = bytes.fromhex(mac.replace(":", ""))
    member_key = bytes([4, 0, 0, 0]) + socket.inet_aton(addr) + bytes(12)
    return any(raw_mac in value for _k, value in _bpf_entries(net, "endpoints")) or \
        any(key == member_key for key, _v in _bpf_entries(net, "members"))


def _members(net: h.Network) -> list:
    """(container, segment, IPv4) of every member `secnet show` lists."""
    data = v.secnet_json("show", net.name)
    return sorted((m["container"], s["name"], (m.get("ipv4") or "").split("/")[0])
                  for s in data["segments"] for m in s["members"])


@pytest.mark.exclusive
def test_a_container_stopped_while_the_daemon_was_down_leaves_nothing(backend, make_network, run_container):
    """U13-F1: `docker stop` while the daemon is down. After the restart the stopped
    container's endpoint is gone (row, veth, datapath elements, `show`); a container
    that takes its address is the one `log` names; started again, the stopped
    container gets a new endpoint and is listed once."""
    net = fh.network(make_network, "sn-stopped", ipv6=False,
                     opts={"secnet.allow": "web->db:tcp/8080 web->api:tcp/8080"})
    db = run_container(net, "db", labels={SEG: "db"})
    web = run_container(net, "web", labels={SEG: "web"})
    (veth,) = [link["ifname"] for link in h.links_owned_by(web.endpoint_id)]   # the host end
    mac = h.docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net.name}").MacAddress}}}}',
                   web.name).stdout.strip()
    assert _datapath_holds(net, backend, veth, mac, web.ip)
    h.plugin_kill()
    try:
        h.docker("stop", "-t", "1", web.name, timeout=180)
    finally:
        h.plugin_start()
    h.wait_until(lambda: not h.state_endpoint_rows(endpoint_id=web.endpoint_id), 15,
                 "the stopped container's endpoint to be dropped")
    assert h.links_owned_by(web.endpoint_id) == []
    assert not _datapath_holds(net, backend, veth, mac, web.ip)
    assert _members(net) == [(db.name, "db", db.ip)]

    api = run_container(net, "api", labels={SEG: "api"}, extra=["--ip", web.ip])   # takes web's address
    assert _members(net) == sorted([(db.name, "db", db.ip), (api.name, "api", web.ip)])
    cursor = v.log_cursor()
    assert not v.tcp_try(db, api.ip, h.LISTEN_PORT)                      # no rule db->api
    entry, _ = v.wait_entry(net, cursor, lambda e: e["src"].get("container") == db.name
                            and e["dst"].get("address") == api.ip)
    assert (entry["dst"].get("container"), entry["dst"].get("segment")) == (api.name, "api"), entry

    h.docker("start", web.name)
    again = h.inspect_container(web.name, net)
    assert again.endpoint_id != web.endpoint_id and again.ip != web.ip
    assert [m for m in _members(net) if m[0] == web.name] == [(web.name, "web", again.ip)]
    assert h.tcp(again, db) and h.tcp(again, api)
    assert not v.tcp_try(api, db.ip, h.LISTEN_PORT)
