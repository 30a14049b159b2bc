"""plugin.enforce.reconciler against a recording backend: every change is a delta."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, strategies as st

from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.backend import Counters, Port
from plugin.enforce.reconciler import Realized, Reconciler
from segmentation.identities import PENDING, QUARANTINED
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules

NID = "cd" * 32


class RecordingBackend:
    """Keeps what a datapath would hold, and the calls that changed it."""

    name = "nftables"

    def __init__(self):
        self.calls, self.policy, self.ports, self.broken = [], None, {}, []
        self.grouped = []   # the grouped= of each apply_ports / apply_policy

    def apply_network(self, net, policy, ports, bridge_made=False):
        self.calls.append(("network", net.id))
        self.bridge_made = bridge_made
        self.policy, self.ports, self.broken = policy, {p.endpoint_id: p for p in ports}, []

    def apply_ports(self, net, changes, grouped=False):
        self.grouped.append(grouped)
        for old, new in changes:
            self.calls.append(("ports", (old.identity if old else None, new.identity if new else None)))
            if new is None:
                self.ports.pop(old.endpoint_id, None)
            else:
                self.ports[new.endpoint_id] = new

    def apply_policy(self, net, delta, changes=(), policy=None, grouped=False):
        self.grouped.append(grouped)
        ports = tuple((old.identity if old else None, new.identity if new else None) for old, new in changes)
        self.calls.append(("policy", len(delta.entries_added), len(delta.entries_removed)) + ports)
        self.policy = self.policy.apply(delta)
        assert policy is None or policy == self.policy   # the caller's map after the delta
        self.ports.update((new.endpoint_id, new) for _old, new in changes)

    def remove_network(self, network_id):
        self.calls.append(("remove", network_id))

    def networks(self):
        return {NID[:12], "0123456789ab"}

    def drift(self, net, policy, ports):
        return list(self.broken)

    def counters(self, net):
        return Counters()


def network(rules="web->api:tcp/8080", **kw):
    return NetworkRecord(id=NID, bridge="sn-t", mtu=1500,
                         options=NetworkOptions(rules=parse_rules(rules), **kw),
                         ipv4=(("10.230.0.0/24", "10.230.0.1/24"),))


def endpoint(n, segment=None, quarantine=None):
    return EndpointRecord(id=str(n) * 64, network_id=NID, veth_host=f"snv{n}", veth_peer=f"snp{n}",
                          mac=f"02:00:00:00:00:0{n}", ipv4=f"10.230.0.{n + 10}/24", segment=segment,
                          quarantine=quarantine)


@pytest.fixture
def env(tmp_path):
    state = State(str(tmp_path))
    backend = RecordingBackend()
    pruned = []

    class Flows:   # records what the reconciler asks the conntrack writer to judge
        def enforce_policy(self, policy, ports, only=None, learned=None, admitted=None):
            pruned.append(policy)

        def forget(self, addresses):
            pass

        def claim(self, bindings, v4, v6):
            pass

        def watch(self, subnets):
            watched.append(set(subnets))

    watched = []
    rec = Reconciler(state, {"nftables": backend}, flows=Flows())
    net = network()
    state.put_network(net)
    rec.network_added(net)
    # the conntrack index keeps this network's flows, and those of members' link-local addresses
    assert watched == [{"10.230.0.0/24", "fe80::/10"}]
    backend.calls.clear()
    yield state, backend, rec, net, pruned
    rec.network_removed(net)
    assert watched[-1] == set()
    state.close()


def test_join_into_a_known_segment_is_one_port_delta(env):
    state, backend, rec, net, _ = env
    ep = endpoint(1, "web")
    state.put_endpoint(ep)
    rec.endpoint_changed(net, ep)
    assert backend.calls == [("ports", (None, state.identities(NID)["web"]))]


def test_join_that_brings_a_new_segment_is_its_entries_and_its_port_in_one_step(env):
    state, backend, rec, net, _ = env
    ep = endpoint(2, "brandnew")
    rec.endpoint_changed(net, ep)
    ident = state.identities(NID)["brandnew"]
    assert backend.calls == [("policy", 1, 0, (None, ident))]   # its intra entry and its port
    assert backend.policy == rec.compiled(net)
    assert backend.ports[ep.id] == rec.ports(net)[0] and rec.ports(net)[0].identity == ident
    backend.calls.clear()
    rec.endpoint_changed(net, ep)                              # a retried join changes nothing
    assert backend.calls == []


@pytest.mark.parametrize("grouped", [True, False])
def test_a_new_segments_join_passes_grouped_to_its_one_step(env, grouped):
    """CreateEndpoint's link writer makes the veth in the interface group: the backend's
    step for a new segment (apply_policy) is told so, as a known segment's apply_ports is."""
    state, backend, rec, net, _ = env
    rec.endpoint_changed(net, endpoint(2, "brandnew"), grouped=grouped)
    rec.endpoint_changed(net, endpoint(3, "brandnew"), grouped=grouped)
    assert [c[0] for c in backend.calls] == ["policy", "ports"] and backend.grouped == [grouped, grouped]


def test_brings_segment_tells_a_join_that_needs_a_policy_delta(env):
    state, backend, rec, net, _ = env
    assert not rec.brings_segment(net, endpoint(1, "web"))        # a rule names it: it has an identity
    assert rec.brings_segment(net, endpoint(2, "brandnew"))
    assert not rec.brings_segment(net, endpoint(3, None))         # pending: no segment yet
    assert not rec.brings_segment(net, endpoint(4, "other", quarantine="bad label"))
    rec.endpoint_changed(net, endpoint(2, "brandnew"))
    assert not rec.brings_segment(net, endpoint(5, "brandnew"))
    elsewhere = dataclasses.replace(net, id="f" * 64)               # a network not realized here
    assert not rec.brings_segment(elsewhere, endpoint(6, "brandnew"))


def test_pending_and_quarantined_ports_carry_reserved_identities(env):
    state, backend, rec, net, _ = env
    rec.endpoint_changed(net, endpoint(3))
    rec.endpoint_changed(net, endpoint(4, "bad name!", quarantine="invalid label"))
    assert backend.ports["3" * 64].identity == PENDING
    assert backend.ports["4" * 64].identity == QUARANTINED


def test_a_policy_edit_is_a_delta_and_prunes_flows(env):
    state, backend, rec, net, pruned = env
    # an edit that only adds east-west entries denies nothing: no flow is judged again
    more = net.evolve(options=NetworkOptions(rules=parse_rules("web->api:tcp/8080 api->db:tcp/5432")))
    state.put_network(more)
    rec.policy_changed(more)
    assert backend.calls[0][0] == "policy" and ("network", NID) not in backend.calls
    assert backend.policy == rec.compiled(more) and pruned == []
    # one that removes a rule does end the flows it denies
    fewer = more.evolve(options=NetworkOptions(rules=parse_rules("api->db:tcp/5432")))
    state.put_network(fewer)
    rec.policy_changed(fewer)
    assert backend.policy == rec.compiled(fewer) and pruned == [rec.compiled(fewer)]
    assert backend.policy == compile_policy_map(fewer.options, state.identities(NID))
    assert ("network", NID) not in backend.calls


def test_identities_survive_a_restart(env, tmp_path):
    state, backend, rec, net, _ = env
    before = state.identities(NID)
    state.close()
    again = State(str(tmp_path))
    rec2 = Reconciler(again, {"nftables": RecordingBackend()})
    assert dict(rec2.compiled(net).identities) == before
    again.close()


def test_drift_is_repaired_and_orphans_removed(env):
    state, backend, rec, net, _ = env
    assert rec.reconcile(full=False) == 0 and backend.calls == []
    backend.broken = ["element missing"]
    assert rec.reconcile(full=False) == 1 and ("network", NID) in backend.calls
    rec.reconcile(full=True)
    assert ("remove", "0123456789ab") in backend.calls and ("remove", NID[:12]) not in backend.calls


def test_drift_that_a_rewrite_does_not_remove_is_not_rewritten_in_a_loop(env):
    state, backend, rec, net, _ = env

    class Stubborn(RecordingBackend):
        def drift(self, net, policy, ports):
            return ["chain x: item 1 differs"]

    stubborn = Stubborn()
    rec.backends["nftables"] = stubborn
    assert rec.reconcile(full=False) == 1           # one rewrite ...
    assert rec.reconcile(full=False) == 0           # ... and no second one for the same difference
    assert [c for c in stubborn.calls if c[0] == "network"] == [("network", NID)]


class RecordingDns:
    """Records what the reconciler tells the DNS service; ``fail`` makes every call raise."""

    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, args))
            if self.fail:
                raise OSError("nft refused")
            return {}
        return call


def test_the_dns_service_hears_every_change_and_its_failures_cost_only_learning(env):
    state, backend, rec, net, pruned = env
    dns = rec.dns = RecordingDns()
    net = net.evolve(options=NetworkOptions(rules=parse_rules("web->dns(api.example.test):tcp/443")))
    state.put_network(net)
    rec.policy_changed(net)
    (what, (nid, bridge, policy, ports)), = [c for c in dns.calls if c[0] == "network"]
    assert (what, nid, bridge) == ("network", NID, "sn-t") and policy.fqdns == rec.compiled(net).fqdns
    ep = endpoint(1, "web")
    state.put_endpoint(ep)
    rec.endpoint_changed(net, ep)
    rec.endpoint_removed(net, ep)
    told = [(n, a[1]) for n, a in dns.calls if n == "ports"]
    assert [(old is None, new is None) for _n, ((old, new),) in told] == [(True, False), (False, True)]
    assert ("learned", (NID,)) in dns.calls          # flows to learned addresses are not pruned
    rec.reconcile(full=True)
    assert [c[0] for c in dns.calls[-2:]] == ["network", "repair"]
    assert dns.calls[-2][1][-1] is backend             # a whole write names the backend
    rec.dns = RecordingDns(fail=True)
    rec.endpoint_changed(net, endpoint(2, "web"))     # does not raise
    rec.policy_changed(net)
    rec.network_removed(net)
    assert ("removed", (NID,)) in rec.dns.calls and ("remove", NID) in backend.calls


def test_a_new_segment_tells_the_dns_service_its_policy_and_the_port_without_a_rebuild(env):
    state, backend, rec, net, _ = env
    dns = rec.dns = RecordingDns()
    rec.endpoint_changed(net, endpoint(3, "brandnew"))
    assert [name for name, _args in dns.calls] == ["policy", "ports"]   # no "network": no rebuild
    assert dns.calls[0][1] == (NID, rec.compiled(net))
    ((old, new),) = dns.calls[1][1][1]
    assert old is None and new.identity == state.identities(NID)["brandnew"]


# (endpoint, segment or None, quarantined?) to put, or (endpoint,) to pop
_CHANGES = st.lists(st.one_of(
    st.tuples(st.integers(0, 5), st.sampled_from([None, "web", "api", "db"]), st.booleans()),
    st.tuples(st.integers(0, 5))), max_size=40)


@given(_CHANGES, st.integers(0, 5))
def test_live_segments_kept_by_port_changes_equal_those_counted_afresh(changes, but):
    real = Realized(spec=None, policy=None, ports={"e9": Port("e9", "snv9", "02:00:00:00:00:09", segment="web")})
    for change in changes:
        if len(change) == 1:
            real.pop_port(f"e{change[0]}")
        else:
            n, segment, quarantined = change
            real.put_port(Port(f"e{n}", f"snv{n}", f"02:00:00:00:00:0{n}", segment=segment,
                               quarantine="bad label" if quarantined else None))
    for skip in (None, f"e{but}"):
        afresh = {p.segment for eid, p in real.ports.items()
                  if p.quarantine is None and p.segment is not None and eid != skip}
        assert real.live_segments(but=skip) == afresh


def test_a_policy_edit_asks_a_backend_with_its_own_conntrack_to_end_learned_flows(tmp_path):
    """eBPF's program keeps a learned flow while any dns(...) rule of its segment names
    its service: after an edit the reconciler hands it what taught each address (U7-F1)."""
    class OwnConntrack(RecordingBackend):
        def end_learned_flows(self, net, policy, learned, admitted):
            self.calls.append(("end_learned", learned, admitted))
            return 1

    class Dns:   # the DnsService as the reconciler sees it
        def __getattr__(self, name):          # network, policy, ports, removed, repair
            return lambda *args: None

        def learned(self, network_id):
            return {("web", "r"): {}}

        def admitted(self, network_id):
            return {(1, "198.51.100.7"): {("r", "tcp", 443, 443)}}

    class Flows:
        def enforce_policy(self, policy, ports, only=None, learned=None, admitted=None):
            seen.append((learned, admitted))
            return 2

        def watch(self, subnets):
            pass

        def forget(self, addresses):
            pass

    seen, state, backend = [], State(str(tmp_path)), OwnConntrack()
    rec = Reconciler(state, {"nftables": backend}, flows=Flows(), dns=Dns())
    net = network("web->dns(a.test):tcp/443 web->dns(b.test):tcp/443")
    state.put_network(net)
    rec.network_added(net)
    fewer = net.evolve(options=NetworkOptions(rules=parse_rules("web->dns(a.test):tcp/443")))
    state.put_network(fewer)
    rec.policy_changed(fewer)
    expected = (Dns().learned(NID), Dns().admitted(NID))
    assert seen == [expected] and backend.calls[-1] == ("end_learned",) + expected
    audit = fewer.evolve(options=NetworkOptions(rules=fewer.options.rules, mode="audit"))
    state.put_network(audit)
    backend.calls.clear()
    rec.policy_changed(audit)                     # audit mode ends nothing
    assert seen == [expected] and not [c for c in backend.calls if c[0] == "end_learned"]
    rec.network_removed(audit)
    state.close()


def test_a_new_segment_takes_over_an_idle_identity_and_its_entries_in_force(env):
    """Segments whose last member left stay allocated until a new segment takes over the
    lowest idle identity: its entries are those in force, so the join is its port
    alone (no entry written), and the other idle segments stay for the next ones."""
    state, backend, rec, net, _ = env
    dns = rec.dns = RecordingDns()
    gone = [endpoint(n, f"old{n}") for n in (1, 2, 3)]
    for ep in gone:
        rec.endpoint_changed(net, ep)
    ids = dict(state.identities(NID))
    for ep in gone:
        rec.endpoint_removed(net, ep)
    assert not rec.brings_segment(net, endpoint(4, "fresh4"))     # no new entries: veth beside the port
    backend.calls.clear()
    rec.endpoint_changed(net, endpoint(4, "fresh4"))
    now = state.identities(NID)
    assert now["fresh4"] == ids["old1"] and "old1" not in now
    assert (now["old2"], now["old3"]) == (ids["old2"], ids["old3"])   # kept for the next ones
    assert backend.calls == [("ports", (None, ids["old1"]))]
    assert rec.compiled(net) == compile_policy_map(net.options, now)
    assert backend.policy.entries == rec.compiled(net).entries                # (a backend keys by number)
    assert ("policy", (NID, rec.compiled(net))) in dns.calls         # the identity's new name
    rec.endpoint_changed(net, endpoint(5, "fresh5"))
    assert state.identities(NID)["fresh5"] == ids["old2"] and backend.calls[-1] == ("ports", (None, ids["old2"]))
    rec.policy_changed(net.evolve(options=NetworkOptions(rules=parse_rules("web->api:tcp/8081"))))
    assert "old3" not in state.identities(NID)                      # an edit frees every idle one


def test_a_new_segment_with_a_lower_free_identity_gets_new_entries(env):
    state, backend, rec, net, _ = env
    rec.endpoint_changed(net, endpoint(1, "old1"))
    rec.endpoint_changed(net, endpoint(2, "old2"))
    rec.endpoint_removed(net, endpoint(2, "old2"))
    rec.endpoint_removed(net, endpoint(1, "old1"))
    rec.policy_changed(net.evolve(options=NetworkOptions(rules=parse_rules("web->api:tcp/8080"))))
    assert rec.brings_segment(net, endpoint(3, "fresh"))
    backend.calls.clear()
    rec.endpoint_changed(net, endpoint(3, "fresh"))
    ident = state.identities(NID)["fresh"]
    assert backend.calls == [("policy", 1, 0, (None, ident))]       # its intra entry and its port
    assert backend.policy == rec.compiled(net)


def test_with_dns_rules_a_new_segment_takes_over_no_idle_identity(env):
    """What a segment learned from DNS answers is kept by identity: a newcomer taking
    the identity over would inherit it. With DNS rules, idle segments are freed as before."""
    state, backend, rec, net, _ = env
    net = net.evolve(options=NetworkOptions(rules=parse_rules("*->dns(api.example.test):tcp/443")))
    state.put_network(net)
    rec.policy_changed(net)
    for n in (1, 2):
        rec.endpoint_changed(net, endpoint(n, f"old{n}"))
    for n in (1, 2):
        rec.endpoint_removed(net, endpoint(n, f"old{n}"))
    assert rec.brings_segment(net, endpoint(3, "fresh"))
    rec.endpoint_changed(net, endpoint(3, "fresh"))
    assert not {"old1", "old2"} & set(state.identities(NID))
