"""Throwaway network namespaces for the kernel tier, and the one lab every datapath runs in.

``lab`` builds a "host" namespace ``sn-k-<uuid6>`` holding a Linux bridge
with br_netfilter on (gateway 10.236.0.1/24, fd00:236::1/64, forwarding
on), an "outside" namespace routed through the host (10.237.0.2,
fd00:237::2: another host on the LAN), and ``lab.add(n)`` plugs n
"container" namespaces into the bridge with a veth each (host side on the
bridge, container side ``eth0`` with 10.236.0.x/24, fd00:236::x/64, a known
MAC and a default route through the gateway).

The datapath under test is a backend object (``plugin.enforce.backend``)
built and called on a thread inside the host namespace; the ``lab``
fixture is parametrized over :data:`BACKENDS` (``[nftables]``, ``[ebpf]``),
so that every behaviour test runs on each. The lab drives it only through
the Backend interface, with a PolicyMap compiled from real options
(``lab.apply``, ``lab.update``, ``lab.move``), and reads it back in neutral
terms (``lab.counters``, ``lab.dropped``, ``lab.drift``). A test that only
one backend has says so with ``@only("nftables")`` / ``@only("ebpf")``.

Flow cutting is the *system's* behaviour on both: the nftables backend
leaves established flows to the reconciler, which prunes their conntrack
entries (plugin.kernel.conntrack.Flows.enforce_policy) after a policy or membership
change; the lab does the same, inside its host namespace. The eBPF backend
cuts them itself (generations); the lab does not help it.

Cleanup, also when the test fails: the network is removed through the
backend, the namespaces are deleted (with them the tables, veths and tc
filters), and the eBPF pins under /sys/fs/bpf/secnet-test-* are removed
(bpffs is not per namespace) -- the finalizer asserts that nothing is left.

Packets (probes, echo servers, raw frames) are in ``packets``. Kept in a
module of its own (not conftest.py) so that it cannot collide with the
netlink tests' conftest; the test modules import the fixtures.
"""
from __future__ import annotations

import os
import queue
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from packets import Responder, netns, sh
from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.backend import NetworkSpec, Port
from plugin.kernel.conntrack import Flows, Kernel
from plugin.kernel import netns as plugin_netns
from segmentation.identities import PENDING, QUARANTINED, MemoryAllocator
from segmentation.options import NetworkOptions, parse_network_options
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules

BRIDGE = "snbr0"
BRIDGE_MAC = "02:42:0a:ec:00:01"
NET_ID = "5ec0de" + "0" * 58
GATEWAY4, GATEWAY6 = "10.236.0.1", "fd00:236::1"
SUBNETS = ("10.236.0.0/24", "fd00:236::/64")
UPLINK = "snup0"                      # host side of the link to the outside namespace
HOST4, HOST6 = "10.237.0.1", "fd00:237::1"
OUTSIDE4, OUTSIDE6 = "10.237.0.2", "fd00:237::2"
PIN_PREFIX = "/sys/fs/bpf/secnet-test-"


def make_nftables(pin_root: str):
    from plugin.enforce.nftables import NftBackend   # noqa: PLC0415
    return NftBackend()


def make_ebpf(pin_root: str):
    """As the daemon wires it (plugin.daemon.wiring), with the lab's own pin root."""
    from plugin.enforce.ebpf.backend import EbpfBackend   # noqa: PLC0415
    from plugin.enforce.nftables.natonly import NatTable   # noqa: PLC0415
    return EbpfBackend(pin_root=pin_root, nat=NatTable())


#: backend name -> factory(pin_root), called on a thread inside the lab's host namespace
BACKENDS = {"nftables": make_nftables, "ebpf": make_ebpf}


def only(*names: str):
    """Mark a test that is about one backend's own mechanics, not a shared behaviour."""
    return pytest.mark.parametrize("lab", names, indirect=True)


class NsKernel(Kernel):
    """The conntrack table of namespace ``ns`` (ctnetlink sockets opened inside it)."""

    def __init__(self, ns: str):
        self.ns = ns

    def entries(self, addresses=None):
        with netns(self.ns):
            return super().entries(addresses)

    def delete(self, entries):
        with netns(self.ns):
            return super().delete(entries)


# --- the lab -----------------------------------------------------------------

@dataclass(frozen=True)
class Container:
    ns: str
    index: int
    veth: str      # host side, the bridge port
    mac: str
    ip4: str
    ip6: str

    def ip(self, family: int) -> str:
        return self.ip4 if family == 4 else self.ip6

    def ip_cmd(self, *args: str, check: bool = True):
        return sh("ip", "-n", self.ns, *args, check=check)


class InNamespace:
    """Builds ``factory()`` on a thread inside namespace ``name`` and runs every
    method call of the object on that thread (its sockets live there)."""

    def __init__(self, name: str, factory):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=plugin_netns.enter,
                                        initargs=(f"/run/netns/{name}",))
        self._obj = self._pool.submit(factory).result()

    def __getattr__(self, attr):
        value = getattr(self._obj, attr)
        if not callable(value):
            return value
        return lambda *args, **kw: self._pool.submit(value, *args, **kw).result()

    def call(self, fn, *args, **kw):
        """``fn(*args)`` on the object's thread (inside the namespace)."""
        return self._pool.submit(fn, *args, **kw).result()

    @property
    def obj(self):
        return self._obj

    def shutdown(self) -> None:
        try:
            self._pool.submit(self._obj.close).result()
        finally:
            self._pool.shutdown(wait=True)

    def shutdown_plain(self) -> None:
        """Stop the thread of an object that has no ``close``."""
        self._pool.shutdown(wait=True)


class Lab:
    """A host namespace with a bridge, an outside namespace, containers and a backend."""

    def __init__(self, backend_name: str):
        tag = uuid.uuid4().hex
        self.host = f"sn-k-{tag[:6]}"
        self.pin_root = PIN_PREFIX + tag[:8]
        self.backend_name = backend_name
        self.containers: list = []
        self.namespaces: list = []
        self.responder = Responder()
        self.backend = None
        self.allocator = MemoryAllocator()
        self.net = NetworkSpec(NET_ID, BRIDGE, SUBNETS, (GATEWAY4, GATEWAY6))
        self.options = parse_network_options({})
        self.policy = None
        self.members: dict = {}   # container -> Port
        self.extra: list = []     # Ports apply() got as they are (pending, quarantined)
        self.table = "secnet_" + NET_ID[:12]

    def setup_host(self) -> None:
        self._add_ns(self.host)
        sh("ip", "-n", self.host, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
        sh("ip", "-n", self.host, "addr", "add", f"{GATEWAY4}/24", "dev", BRIDGE)
        sh("ip", "-n", self.host, "addr", "add", f"{GATEWAY6}/64", "dev", BRIDGE, "nodad")
        sh("ip", "-n", self.host, "link", "set", BRIDGE, "up")
        self.exec("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1",
                  "net.bridge.bridge-nf-call-ip6tables=1", "net.ipv4.ip_forward=1",
                  "net.ipv6.conf.all.forwarding=1", "net.ipv4.ping_group_range=0 0")
        out = self.exec("sysctl", "-n", "net.bridge.bridge-nf-call-iptables",
                        "net.bridge.bridge-nf-call-ip6tables").stdout.split()
        assert out == ["1", "1"], f"br_netfilter is not on in {self.host}: {out}"
        self.outside = self._add_outside()
        self.host_box = Container(ns=self.host, index=98, veth="", mac=BRIDGE_MAC, ip4=HOST4, ip6=HOST6)
        for box in (self.outside, self.host_box):
            self.responder.listen(box)
        self.backend = InNamespace(self.host, lambda: BACKENDS[self.backend_name](self.pin_root))

    def _add_outside(self) -> Container:
        """Another host on the LAN, reaching the network through this host."""
        out = Container(ns=f"{self.host}-out", index=99, veth=UPLINK, mac="02:42:0a:ed:00:02",
                        ip4=OUTSIDE4, ip6=OUTSIDE6)
        self._add_ns(out.ns)
        sh("ip", "-n", self.host, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0",
           "netns", out.ns)
        sh("ip", "-n", self.host, "addr", "add", f"{HOST4}/24", "dev", UPLINK)
        sh("ip", "-n", self.host, "addr", "add", f"{HOST6}/64", "dev", UPLINK, "nodad")
        sh("ip", "-n", self.host, "link", "set", UPLINK, "up")
        self._address(out, HOST4, HOST6)
        return out

    def _address(self, c: Container, gw4: str, gw6: str) -> None:
        c.ip_cmd("link", "set", "eth0", "address", c.mac)
        c.ip_cmd("addr", "add", f"{c.ip4}/24", "dev", "eth0")
        c.ip_cmd("addr", "add", f"{c.ip6}/64", "dev", "eth0", "nodad")
        c.ip_cmd("link", "set", "eth0", "up")
        c.ip_cmd("route", "add", "default", "via", gw4)
        c.ip_cmd("-6", "route", "add", "default", "via", gw6)
        sh("ip", "netns", "exec", c.ns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 0")

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def exec(self, *argv: str, check: bool = True):
        """Run a command inside the host namespace."""
        return sh("ip", "netns", "exec", self.host, *argv, check=check)

    def nft(self, *args: str, check: bool = True):
        return self.exec("nft", *args, check=check)

    def add(self, n: int) -> list:
        """Plug ``n`` more containers into the bridge; they answer probes at once."""
        new = [self._add_container(len(self.containers) + i) for i in range(n)]
        self.containers += new
        for c in new:
            self.responder.listen(c)
        return new

    def _add_container(self, i: int) -> Container:
        host = 10 + i
        c = Container(ns=f"{self.host}-c{i}", index=i, veth=f"snv{i}",
                      mac=f"02:42:0a:ec:00:{host:02x}", ip4=f"10.236.0.{host}",
                      ip6=f"fd00:236::{host:x}")
        self._add_ns(c.ns)
        sh("ip", "-n", self.host, "link", "add", c.veth, "type", "veth", "peer", "name", "eth0",
           "netns", c.ns)
        sh("ip", "-n", self.host, "link", "set", c.veth, "master", BRIDGE, "up")
        self._address(c, GATEWAY4, GATEWAY6)
        # the host knows its containers' MACs, as the daemon writes them (permanent
        # neighbour entries: plugin.kernel.neighbours; without them the host could not
        # solicit for a forwarded packet while the fresh bridge's link-local is tentative)
        for addr in (c.ip4, c.ip6):
            sh("ip", "-n", self.host, "neigh", "replace", addr, "lladdr", c.mac, "dev", BRIDGE,
               "nud", "permanent")
        return c

    def link_mac(self, name: str) -> str:
        """MAC of a link of the host namespace (a veth's host side, the bridge)."""
        out = sh("ip", "-n", self.host, "-br", "link", "show", "dev", name).stdout.split()
        return out[2]

    def close(self) -> None:
        """Remove everything the lab made; raise (after trying all) if something stays."""
        errors = []
        self.responder.stop()
        if self.backend is not None:
            try:
                self.backend.remove_network(NET_ID)
            except Exception as exc:   # noqa: BLE001 (reported below, cleanup goes on)
                errors.append(f"remove_network: {exc}")
            self.backend.shutdown()
        for name in reversed(self.namespaces):
            res = sh("ip", "netns", "del", name, check=False)
            if res.returncode != 0:
                errors.append(f"{name}: {res.stderr.strip()}")
        shutil.rmtree(self.pin_root, ignore_errors=True)
        if os.path.exists(self.pin_root):
            errors.append(f"{self.pin_root} is still there")
        assert not errors, "lab cleanup failed: " + "; ".join(errors)

    # --- the datapath, through the Backend interface --------------------------
    def port(self, c: Container, segment=None, quarantine=None, published=()) -> Port:
        """The Port of ``c`` as a member of ``segment`` (None: pending)."""
        ids = self.allocator.identities(NET_ID)
        identity = QUARANTINED if quarantine else ids[segment] if segment else PENDING
        return Port(endpoint_id=f"ep{c.index:02d}", name=c.veth, mac=c.mac, ipv4=c.ip4, ipv6=c.ip6,
                    identity=identity, segment=segment, quarantine=quarantine,
                    published=tuple(published))

    def compile(self, options, members: dict):
        named = {e.value for r in options.rules for e in (r.src, r.dst) if e.kind == "segment"}
        segments = named | {seg for seg in members.values() if seg} | {options.default_segment}
        known = set(self.allocator.identities(NET_ID))
        ids = self.allocator.allocate(NET_ID, segments | known)
        return compile_policy_map(options, ids)

    def apply(self, rules: str, members: dict, intra: str = "allow", extra_ports=(), mode=None,
              published=None, bridge_made: bool = False, **options):
        """Compile ``rules`` over ``members`` (container -> segment) and apply the whole network
        (``bridge_made``: as CreateNetwork tells the backend, ``Backend.apply_network``)."""
        self.options = _options(rules, intra, options)
        self.policy = self.compile(self.options, members)
        published = published or {}
        self.members = {c: self.port(c, seg, published=published.get(c, ())) for c, seg in members.items()}
        if mode:
            self.net = NetworkSpec(NET_ID, BRIDGE, SUBNETS, (GATEWAY4, GATEWAY6),
                                   internal=self.options.internal, mode=mode)
        else:
            self.net = NetworkSpec(NET_ID, BRIDGE, SUBNETS, (GATEWAY4, GATEWAY6),
                                   internal=self.options.internal)
        self.extra = list(extra_ports)
        self.backend.apply_network(self.net, self.policy, self.ports(), bridge_made=bridge_made)
        return self.policy

    def ports(self) -> list:
        return list(self.members.values()) + self.extra

    @property
    def cuts_flows(self) -> bool:
        """Does the backend itself end established flows a change denies?"""
        return self.backend_name == "ebpf"

    def _repairs(self) -> int:
        return getattr(self.backend.obj, "repairs", 0)

    def update(self, rules: str | None = None, intra: str | None = None, mode: str | None = None,
               repair_ok: bool = False, **options):
        """Change the policy (or mode) live: one apply_policy with the delta (which must
        not have needed a rebuild, unless ``repair_ok``), then end the flows it denies."""
        repairs = self._repairs()
        rules = self.options.rules if rules is None else rules
        old = self.options
        merged = {"egress": old.egress, **options}
        self.options = _options(rules, intra or old.intra, merged, internal=old.internal)
        new = self.compile(self.options, {c: p.segment for c, p in self.members.items()})
        if mode:
            self.net = NetworkSpec(NET_ID, BRIDGE, SUBNETS, (GATEWAY4, GATEWAY6),
                                   internal=self.net.internal, mode=mode)
        self.backend.apply_policy(self.net, self.policy.delta(new))
        self.policy = new
        assert repair_ok or self._repairs() == repairs, "the delta was refused: rebuilt"
        self.end_denied_flows()

    def move(self, c: Container, segment=None, quarantine=None) -> None:
        """Change one member (join, leave with segment=None and c gone, quarantine)."""
        old, repairs = self.members.get(c), self._repairs()
        if old is None and any(p.name == c.veth for p in self.extra):   # one of apply's extra ports
            old = next(p for p in self.extra if p.name == c.veth)
            self.extra.remove(old)
        new = self.port(c, segment, quarantine, published=old.published if old else ())
        self.members[c] = new
        self.backend.apply_ports(self.net, [(old, new)])
        assert self._repairs() == repairs, "the delta was refused: rebuilt"
        if old is not None:
            self.end_denied_flows()

    def end_denied_flows(self) -> None:
        """What the reconciler does after a change (never in audit mode), for a backend
        that does not cut flows itself: prune conntrack inside the host namespace."""
        if not self.cuts_flows and self.net.mode != "audit":
            Flows(NsKernel(self.host)).enforce_policy(self.policy, self.ports())

    def drift(self) -> list:
        return self.backend.drift(self.net, self.policy, self.ports())

    def drop_events(self) -> queue.Queue:
        """The backend's DropEvents from now on, as a queue (see :func:`drain`)."""
        events: queue.Queue = queue.Queue()
        self.backend.watch_drops(events.put)
        time.sleep(0.3)     # the reader binds its NFLOG group / opens its ring buffer
        return events

    def repair(self) -> None:
        """What the reconciler does on drift: apply the whole network again."""
        self.backend.apply_network(self.net, self.policy, self.ports())

    def counters(self):
        return self.backend.counters(self.net)

    def dropped(self, reason: str, audit: bool = False) -> int:
        """Packets the backend counted as dropped (or, ``audit``, let pass) for ``reason``."""
        got = self.counters()
        return (got.would_drop_reasons if audit else got.reasons).get(reason, (0, 0))[0]


def drain(q: queue.Queue, wait: float) -> list:
    """What arrives on ``q`` within ``wait`` seconds."""
    out, deadline = [], time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(q.get(timeout=left))
        except queue.Empty:
            break
    return out


def _options(rules, intra: str, options: dict, internal: bool = False):
    if not isinstance(rules, str):
        rules = " ".join(r.text() for r in rules)
    generic = {"secnet.allow": rules, "secnet.intra": intra}
    if options.get("egress"):
        generic["secnet.egress"] = options["egress"]
    return parse_network_options(generic, internal=options.get("internal", internal))


@pytest.fixture(params=sorted(BACKENDS))
def lab(request):
    """A fresh host namespace with a br_netfilter bridge and a backend; ``lab.add(n)`` adds containers."""
    the_lab = Lab(request.param)
    try:
        the_lab.setup_host()
        yield the_lab
    finally:
        the_lab.close()


# --- saved state, as the daemon keeps it -------------------------------------------------
def endpoint_record(c, segment) -> EndpointRecord:
    """The saved endpoint of lab container ``c`` in ``segment`` (None: pending)."""
    return EndpointRecord(id=f"ep{c.index:02d}", network_id=NET_ID, veth_host=c.veth,
                          veth_peer="eth0", mac=c.mac, ipv4=f"{c.ip4}/24", ipv6=f"{c.ip6}/64",
                          segment=segment, container=f"c{c.index}", joined=True)


def saved_network(lab, path: str, rules: str, web, api) -> tuple:
    """(State at ``path``, NetworkRecord): the lab's network (``rules``, intra deny, dual
    stack) and its members ``web`` and ``api``, saved."""
    state = State(path)
    options = NetworkOptions(rules=parse_rules(rules), intra="deny", ipv6=True, backend=lab.backend_name)
    net = NetworkRecord(id=NET_ID, bridge=BRIDGE, mtu=1500, options=options,
                        ipv4=(("10.236.0.0/24", f"{GATEWAY4}/24"),),
                        ipv6=(("fd00:236::/64", f"{GATEWAY6}/64"),))
    state.put_network(net)
    state.put_endpoints([endpoint_record(web, "web"), endpoint_record(api, "api")])
    return state, net
