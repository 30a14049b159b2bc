"""plugin.driver.earlylookup: Join's engine lookup begun at CreateEndpoint, and how Join
takes it (a fake lookup; the resolver with a fake Docker client)."""
import threading
import time

import pytest

from plugin.driver.earlylookup import EarlyLookups, NotListedYet

from label_fakes import CID, EID, NID, FakeClient, endpoint, joining, network, resolver, row

ANSWER = ("web-1", CID, {"secnet.segment": "web"})


class Lookup:
    """Answers after ``misses`` LookupErrors (the engine does not list the endpoint yet),
    or raises ``fail``; records its calls."""

    def __init__(self, misses=0, fail=None, gate=None):
        self.misses, self.fail, self.gate, self.calls = misses, fail, gate, []

    def __call__(self, nid, eid, deadline):
        self.calls.append((nid, eid))
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail is not None:
            raise self.fail
        if len(self.calls) <= self.misses:
            raise NotListedYet("not listed yet")
        return ANSWER


@pytest.fixture
def made():
    made = []
    yield lambda lookup, **kw: made.append(EarlyLookups(lookup, delay=0, retry=0.001, **kw)) or made[-1]
    for early in made:
        early.close()


def soon():
    return time.monotonic() + 2.0


def test_join_takes_the_answer_read_again_until_the_engine_lists_the_endpoint(made):
    lookup = Lookup(misses=2)
    early = made(lookup)
    early.begin(NID, EID)
    assert early.take(EID, soon()) == ANSWER
    assert lookup.calls == [(NID, EID)] * 3
    assert early.take(EID, soon()) is None          # taken once: a retried Join looks itself


@pytest.mark.parametrize("fail", [TimeoutError("read timed out"), ConnectionRefusedError(),
                                  LookupError("container web-1 not listed")])
def test_a_failed_lookup_gives_join_nothing_and_is_not_repeated(made, fail):
    lookup = Lookup(fail=fail)
    early = made(lookup)
    early.begin(NID, EID)
    assert early.take(EID, soon()) is None
    assert len(lookup.calls) == 1


def test_an_endpoint_never_listed_is_given_up_after_the_window(made):
    early = made(Lookup(misses=10 ** 6), window=0.05)
    early.begin(NID, EID)
    started = time.monotonic()
    assert early.take(EID, soon()) is None
    assert time.monotonic() - started < 1.0


def test_join_waits_at_most_half_of_what_is_left_of_its_deadline(made):
    gate = threading.Event()
    early = made(Lookup(gate=gate))
    early.begin(NID, EID)
    started = time.monotonic()
    assert early.take(EID, started + 0.4) is None
    assert 0.15 <= time.monotonic() - started < 0.39   # ~0.2 s, never the whole 0.4
    gate.set()


def test_a_forgotten_lookup_stops_reading_again_and_frees_the_thread(made):
    lookup = Lookup(misses=10 ** 6)
    early = made(lookup, window=30)
    early.begin(NID, "a")
    time.sleep(0.02)
    early.forget("a")
    time.sleep(0.02)
    calls = len(lookup.calls)
    early.begin(NID, "b")            # runs: the thread is free again
    time.sleep(0.05)
    assert ("x", "b") not in lookup.calls and (NID, "b") in lookup.calls
    assert len([c for c in lookup.calls if c[1] == "a"]) <= calls


def test_a_lookup_not_started_when_join_comes_is_cancelled(made):
    gate = threading.Event()
    first, second = Lookup(gate=gate), Lookup()
    early = made(lambda nid, eid, d: (first if eid == "a" else second)(nid, eid, d))
    early.begin(NID, "a")          # holds the one thread
    early.begin(NID, "b")
    assert early.take("b", soon()) is None
    gate.set()
    assert early.take("a", soon()) == ANSWER
    assert second.calls == []


def test_an_old_answer_is_not_used(made):
    early = made(Lookup(), window=0.05)
    early.begin(NID, EID)
    time.sleep(0.2)
    assert early.take(EID, soon()) is None


def test_forget_and_the_limit(made):
    early = made(Lookup(), limit=1)
    early.begin(NID, "a")
    early.begin(NID, "b")          # over the limit: not begun
    assert early.take("b", soon()) is None
    early.forget("a")
    assert early.take("a", soon()) is None


def test_join_uses_the_early_answer_and_decides_the_segment_at_join():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining())
    res = resolver(client)
    try:
        res.expect(network(), endpoint())
        deadline = time.monotonic() + 2
        while len(client.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [c[0] for c in client.calls] == ["inspect_network", "containers"]   # early
        ep = res.resolve_at_join(network(default_segment="misc"), endpoint())
        assert (ep.segment, ep.container, ep.container_id) == ("web", "web-1", CID)
        assert len(client.calls) == 2                                              # none at Join
    finally:
        res.stop()


def test_join_looks_itself_when_the_early_lookup_found_nothing():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], {})
    res = resolver(client)
    res.early.window = 0.02
    try:
        res.expect(network(), endpoint())
        time.sleep(0.1)                      # given up: the engine never listed it
        client.members.update(joining())     # now it does
        assert res.resolve_at_join(network(), endpoint()).segment == "web"
    finally:
        res.stop()


def test_no_early_lookup_for_a_driver_opt_segment():
    client = FakeClient(fail=AssertionError("no call"))
    res = resolver(client)
    try:
        res.expect(network(), endpoint(segment_opt="api", segment="api"))
        assert res.early.take(EID, soon()) is None and client.calls == []
    finally:
        res.stop()
