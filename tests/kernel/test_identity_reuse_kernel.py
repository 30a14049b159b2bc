"""Issue 12: a segment identity given again never carries what DNS answers taught it.

Addresses learned for a ``dns(...)`` rule are kept per identity (both
backends: nft elements ``mark . address ...``, the eBPF ``fqdn`` trie keyed by
identity). A ``*->dns(NAME)`` rule gives every segment an entry with the same
rule text, so when segment ``old`` (its last member gone) is freed and its
identity handed to a new segment ``fresh``, the entry -- and with it what
``old`` learned -- would stay in force for ``fresh``, which never resolved the
name. Each way an identity is freed and handed out again is tried with real
packets, through the reconciler, a real SQLite state and the lab's backend:
a join of a new segment, a policy edit, a whole rewrite (drift repair), and a
restart after a crash that left a new segment's endpoint row unenforced.
Egress is denied but DNS to the rig's server (``dns_lab``).
"""
from __future__ import annotations

import pytest

from dns_lab import DNS_RULES, DnsRig, connect, resolve
from nsfixtures import BACKENDS, BRIDGE, GATEWAY4, GATEWAY6, NET_ID, InNamespace, NsKernel, lab  # noqa: F401
from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.reconciler import Reconciler
from plugin.kernel.conntrack import Flows
from segmentation.options import NetworkOptions
from segmentation.rules import parse_rules

pytestmark = pytest.mark.kernel

API = "10.238.0.5"
STAR = "*->dns(api.example.test):tcp/443"


def endpoint(c, segment) -> EndpointRecord:
    return EndpointRecord(id=f"ep{c.index:02d}", network_id=NET_ID, veth_host=c.veth,
                          veth_peer="eth0", mac=c.mac, ipv4=f"{c.ip4}/24", ipv6=f"{c.ip6}/64",
                          segment=segment, container=f"c{c.index}", joined=True)


def network(backend: str, rules: str) -> NetworkRecord:
    options = NetworkOptions(rules=parse_rules(f"{rules} {DNS_RULES}"), egress="deny", ipv6=True,
                             backend=backend)
    return NetworkRecord(id=NET_ID, bridge=BRIDGE, mtu=1500, options=options,
                         ipv4=(("10.236.0.0/24", f"{GATEWAY4}/24"),),
                         ipv6=(("fd00:236::/64", f"{GATEWAY6}/64"),))


class Daemon:
    """What a daemon holds for the lab's network: state, reconciler, DNS service."""

    def __init__(self, lab, rig, path: str, backend=None):
        self.lab, self.rig = lab, rig
        self.state = State(path)
        self.backend = backend or lab.backend
        self.rec = Reconciler(self.state, {lab.backend_name: self.backend},
                              flows=Flows(NsKernel(lab.host)), dns=rig.serve())

    def close(self) -> None:
        self.rig.stop()
        self.state.close()


@pytest.fixture
def taught(lab, tmp_path):
    """(daemon, net, old container, new container): ``old`` learned API and left."""
    rig = DnsRig(lab)
    rig.server.add("api.example.test", "A", 300, API)
    before, after = lab.add(2)
    daemons, extra = [], []
    try:
        daemons.append(Daemon(lab, rig, str(tmp_path / "state")))
        d, net = daemons[0], network(lab.backend_name, STAR)
        d.state.put_network(net)
        d.rec.network_added(net)
        gone = endpoint(before, "old")
        d.state.put_endpoint(gone)
        d.rec.endpoint_changed(net, gone)
        assert connect(before, API) == "timeout"
        assert resolve(before, "api.example.test") == [API]
        assert connect(before, API) == "ok"                      # old learned it
        d.rec.endpoint_removed(net, gone)
        d.state.delete_endpoint(gone.id)
        yield d, net, after, daemons, extra
    finally:
        for d in daemons:
            d.close()
        for backend in extra:
            backend.shutdown()
        rig.close()


def _join(d, net, c, segment: str) -> None:
    ep = endpoint(c, segment)
    d.state.put_endpoint(ep)
    d.rec.endpoint_changed(net, ep)


def _restart(lab, d, tmp_path, daemons, extra):
    """A new daemon on the same state directory and kernel, with a backend of its own."""
    d.close()
    daemons.remove(d)
    backend = InNamespace(lab.host, lambda: BACKENDS[lab.backend_name](lab.pin_root))
    extra.append(backend)
    new = Daemon(lab, d.rig, str(tmp_path / "state"), backend)
    daemons.append(new)
    new.rec.reconcile(full=True)
    return new


@pytest.mark.parametrize("path", ["join", "edit", "repair", "restart"])
def test_a_reused_identity_does_not_inherit_learned_addresses(taught, lab, tmp_path, path):
    d, net, c, daemons, extra = taught
    old = d.state.identities(NET_ID)["old"]
    if path == "edit":                 # an edit frees the idle segment; fresh is named
        net = network(lab.backend_name, f"{STAR} fresh->fresh:tcp/9")
        d.state.put_network(net)
        d.rec.policy_changed(net)
    elif path == "repair":             # a whole rewrite frees the idle segment
        d.rec.reconcile(full=True)
    elif path == "restart":            # crash: fresh's row written, not enforced
        d.state.put_endpoint(endpoint(c, "fresh"))
        d = _restart(lab, d, tmp_path, daemons, extra)
    if path != "restart":
        _join(d, net, c, "fresh")
    assert d.state.identities(NET_ID)["fresh"] == old        # the scenario: the identity is reused
    assert connect(c, API) == "timeout"                      # fresh never resolved the name
    assert resolve(c, "api.example.test") == [API]
    assert connect(c, API) == "ok"                           # its own answer teaches it
