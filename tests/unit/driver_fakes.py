"""In-memory stand-ins for plugin.kernel.links.Netlink and plugin.enforce.hostfw.dockerfw.DockerFirewall,
with the same semantics (ownership by alias, idempotence, LinkConflict), and
Docker-shaped request bodies for the remote-driver protocol."""
from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future
from typing import Optional

from plugin.kernel.links import LinkConflict
from plugin.kernel.neighbours import entries


def new_id() -> str:
    """A 64-hex id like Docker's network and endpoint ids."""
    return uuid.uuid4().hex + uuid.uuid4().hex


class FakeLinks:
    """Links by name: {kind, owner, mtu, master, mac, addrs, peer}."""

    def __init__(self):
        self.links: dict = {}
        self.fail: dict = {}  # method name -> exception to raise
        self.veth_threads: list = []   # the threads start_veth ran on

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def _claim(self, name: str, owner: str, kind: str) -> Optional[dict]:
        link = self.links.get(name)
        if link is not None and (link["owner"] != owner or link["kind"] != kind):
            raise LinkConflict(f"interface {name} already exists and is not this network's")
        return link

    def add_foreign(self, name: str, kind: str = "bridge", owner: Optional[str] = None) -> None:
        self.links[name] = {"kind": kind, "owner": owner, "mtu": 1500, "master": None,
                            "mac": None, "addrs": set(), "peer": None}

    def ensure_bridge(self, name, owner, mtu, addresses, options=()) -> bool:
        self._maybe_fail("ensure_bridge")
        link = self._claim(name, owner, "bridge")
        made = link is None
        if made:
            link = self.links[name] = {"kind": "bridge", "owner": owner, "master": None, "options": dict(options),
                                       "mac": "02:00:00:00:00:01", "addrs": set(), "peer": None}
        link["mtu"] = mtu
        link["addrs"] |= set(addresses)
        return made

    def ensure_ipv6_forwarding(self) -> bool:
        changed, self.ipv6_forwarding = not getattr(self, "ipv6_forwarding", False), True
        return changed

    def ensure_veth(self, host, peer, bridge, owner, mtu, mac, addresses=()) -> None:
        self._maybe_fail("ensure_veth")
        if bridge not in self.links:
            raise LinkConflict(f"bridge {bridge} is missing")
        self.neighbours(bridge).update(entries(mac, addresses))
        link = self._claim(host, owner, "veth")
        if link is None:
            link = self.links[host] = {"kind": "veth", "owner": owner, "addrs": set(), "peer": peer,
                                       "mac": None}
            self.links[peer] = {"kind": "veth", "owner": None, "addrs": set(), "peer": host,
                                "mac": mac, "mtu": mtu, "master": None}
        link.update(master=bridge, mtu=mtu)

    def start_veth(self, *args) -> Future:
        """:meth:`ensure_veth` on a thread of its own, as Netlink runs it on its netlink thread."""
        future: Future = Future()

        def run():
            self.veth_threads.append(threading.current_thread().name)
            try:
                self.ensure_veth(*args)
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)
        threading.Thread(target=run, name="fake-netlink").start()
        return future

    def remove_link(self, name, owner=None) -> bool:
        self._maybe_fail("remove_link")
        link = self.links.get(name)
        if link is None or (owner is not None and link["owner"] != owner):
            return False
        del self.links[name]
        if link.get("peer") in self.links and self.links[link["peer"]]["owner"] is None:
            del self.links[link["peer"]]
        return True

    def neighbours(self, bridge) -> dict:
        """The bridge's permanent neighbour entries, {address: mac}."""
        return self.links[bridge].setdefault("neighbours", {}) if bridge in self.links else {}

    def remove_neighbours(self, bridge, mac, addresses) -> int:
        have = self.neighbours(bridge)
        gone = [a for a, m in entries(mac, addresses).items() if have.get(a) == m]
        for address in gone:
            del have[address]
        return len(gone)

    def prune_neighbours(self, bridge, endpoints) -> int:
        wanted = {a: m for mac, addresses in endpoints for a, m in entries(mac, addresses).items()}
        have = self.neighbours(bridge)
        stale = [a for a, m in have.items() if wanted.get(a) != m]
        for address in stale:
            del have[address]
        return len(stale)

    def link_exists(self, name) -> bool:
        return name in self.links

    def owned_links(self) -> list:
        return [(n, l["kind"], l["owner"]) for n, l in self.links.items() if l["owner"]]

    def of_kind(self, kind: str) -> dict:
        return {n: l for n, l in self.links.items() if l["kind"] == kind}


class FakeFirewall:
    def __init__(self):
        self.rules: set = set()  # (bridge, network_id)
        self.fail: dict = {}

    def ensure(self, bridge, network_id) -> None:
        if "ensure" in self.fail:
            raise self.fail["ensure"]
        self.rules.add((bridge, network_id))

    def remove(self, bridge, network_id) -> None:
        self.rules.discard((bridge, network_id))

    def owned(self) -> list:
        return [("iptables", b, n) for b, n in sorted(self.rules)]


# --- Docker-shaped bodies (as recorded from dockerd 20.10) -----------------
def create_network_body(nid, pool="10.220.1.0/24", gateway="10.220.1.1/24", pool6=None,
                        gateway6=None, generic=None, internal=False) -> dict:
    opts = {"com.docker.network.enable_ipv6": pool6 is not None,
            "com.docker.network.generic": dict(generic or {})}
    if internal:
        opts["com.docker.network.internal"] = True
    body = {"NetworkID": nid, "Options": opts,
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gateway,
                          "AuxAddresses": None}],
            "IPv6Data": []}
    if pool6:
        body["IPv6Data"] = [{"AddressSpace": "LocalDefault", "Pool": pool6, "Gateway": gateway6,
                             "AuxAddresses": None}]
    return body


def create_endpoint_body(nid, eid, address="10.220.1.2/24", address6="", mac="", options=None) -> dict:
    return {"NetworkID": nid, "EndpointID": eid,
            "Interface": {"Address": address, "AddressIPv6": address6, "MacAddress": mac},
            "Options": {"com.docker.network.endpoint.exposedports": [],
                        "com.docker.network.portmap": [], **(options or {})}}


def endpoint_body(nid, eid, sandbox="/var/run/docker/netns/0123456789ab") -> dict:
    return {"NetworkID": nid, "EndpointID": eid, "SandboxKey": sandbox, "Options": {}}
