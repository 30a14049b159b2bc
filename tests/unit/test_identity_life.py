"""plugin.enforce.identities and LearnedStore.forget_identities: a freed identity loses
what DNS answers taught it before the allocator frees it (issue 12), or is not freed."""
from __future__ import annotations

import pytest

from plugin.dns.store import LearnedStore
from plugin.driver.state import State
from plugin.enforce.identities import allocate, freed_by
from plugin.enforce.reconciler import Reconciler
from segmentation.fqdn import Address
from segmentation.policymap import FqdnEntry
from segmentation.options import NetworkOptions
from segmentation.rules import parse_rules
from test_reconciler_unit import NID, RecordingBackend, endpoint, network

STAR = "*->dns(api.example.test):tcp/443"


def test_forget_identities_drops_entries_and_what_they_admitted_of_those_identities_only():
    store = LearnedStore(min_ttl=1)
    old, kept = FqdnEntry(256, "api.example.test", "tcp", 443, 443, STAR), \
        FqdnEntry(257, "api.example.test", "tcp", 443, 443, STAR)
    address = Address("10.229.0.5", 4, 300, ("api.example.test",))
    store.commit(store.plan("n1", [(old, address), (kept, address)]))
    store.forget("n1", {(257, STAR)})                          # 256's entry dropped: remembered
    store.commit(store.plan("n1", [(old, address)]))
    assert set(store.admitted("n1")) == {(256, "10.229.0.5"), (257, "10.229.0.5")}
    assert store.forget_identities("n1", {256}) == [(256, "10.229.0.5", "tcp", 443, 443)]
    assert set(store.admitted("n1")) == {(257, "10.229.0.5")}           # 256's past went too
    assert set(store.current("n1")) == {(257, STAR)} and len(store) == 1
    assert store.forget_identities("n1", {256}) == [] and store.forget_identities("n2", {1}) == []


def test_freed_by_names_the_identities_of_segments_left_out():
    assert freed_by({"a": 256, "b": 257, "c": 258}, ["b", "d"]) == {256, 258}
    assert freed_by({}, ["a"]) == set()


class Dns:
    """A DnsService as the reconciler sees it; ``knows``: told of the network."""

    def __init__(self, state, knows=True, fail=False):
        self.state, self.knows, self.fail, self.unlearned = state, knows, fail, []

    def unlearn(self, network_id, identities):
        self.unlearned.append((set(identities), dict(self.state.identities(network_id))))
        if self.fail:
            raise OSError("nft refused")
        return len(identities) if self.knows else None

    def __getattr__(self, name):
        return lambda *args: {}


class UnlearningBackend(RecordingBackend):
    def unlearn(self, network_id, identities):
        self.calls.append(("unlearn", network_id, sorted(identities)))
        return 1


@pytest.fixture
def star(tmp_path):
    """(state, backend, reconciler, net): a ``*`` DNS rule; segment ``old`` joined and left."""
    state, backend = State(str(tmp_path)), UnlearningBackend()
    rec = Reconciler(state, {"nftables": backend})
    net = network(STAR)
    state.put_network(net)
    rec.network_added(net)
    rec.endpoint_changed(net, endpoint(1, "old"))
    rec.endpoint_removed(net, endpoint(1, "old"))
    yield state, backend, rec, net
    state.close()


def test_a_join_that_reuses_an_identity_revokes_what_it_learned_before_freeing_it(star):
    state, backend, rec, net = star
    dns = rec.dns = Dns(state)
    old = state.identities(NID)["old"]
    rec.endpoint_changed(net, endpoint(2, "fresh"))
    assert state.identities(NID)["fresh"] == old                     # the identity is reused
    (identities, then), = dns.unlearned
    assert identities == {old} and then["old"] == old                # revoked while still old's
    assert not [c for c in backend.calls if c[0] == "unlearn"]       # the service did it


def test_a_revocation_that_fails_frees_nothing_and_fails_the_verb(star):
    state, backend, rec, net = star
    rec.dns = Dns(state, fail=True)
    before = dict(state.identities(NID))
    with pytest.raises(OSError):
        rec.endpoint_changed(net, endpoint(2, "fresh"))
    assert state.identities(NID) == before and "fresh" not in before
    assert all(p.segment != "fresh" for p in backend.ports.values())  # nothing enforced as fresh


@pytest.mark.parametrize("dns", ["absent", "not told"])
def test_without_the_service_the_backend_revokes_from_the_kernel(star, dns):
    state, backend, rec, net = star
    rec.dns = None if dns == "absent" else Dns(state, knows=False)
    old = state.identities(NID)["old"]
    rec.policy_changed(net.evolve(options=NetworkOptions(rules=parse_rules(f"{STAR} new->new:tcp/9"))))
    assert ("unlearn", NID, [old]) in backend.calls
    assert state.identities(NID)["new"] == old


def test_nothing_freed_nothing_revoked(tmp_path):
    state, calls = State(str(tmp_path)), []

    class Backend:
        def unlearn(self, *args):
            calls.append(args)

    assert allocate(state, NID, ["a", "b"], None, Backend()) == {"a": 256, "b": 257}
    assert allocate(state, NID, ["a", "b", "c"], None, Backend())["c"] == 258
    assert calls == []
    assert allocate(state, NID, ["b"], None, Backend()) == {"b": 257}
    assert calls == [(NID, {256, 258})]
    state.close()
