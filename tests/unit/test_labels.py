"""Tests of plugin.driver.labels with a fake Docker client (no engine needed)."""

import re
import threading
import time

import pytest

from plugin.driver.labels import BACKOFF_MAX, BACKOFF_MIN, LabelResolver, LookupTimeout
from plugin.driver.state import EndpointRecord, NetworkRecord
from segmentation.options import NetworkOptions

NID = "n" * 64
EID = "e" * 64
CID = "c" * 64


def network(**opts):
    return NetworkRecord(id=NID, bridge="sn-test", mtu=1500,
                         options=NetworkOptions(**opts).to_dict(), ipv4=(("10.230.0.0/24", None),))


def endpoint(eid=EID, **kw):
    return EndpointRecord(id=eid, network_id=NID, veth_host="h", veth_peer="p", mac="02:00:00:00:00:01",
                          ipv4="10.230.0.2/24", **kw)


class FakeClient:
    """What LabelResolver uses of docker.APIClient, answering from dicts."""

    def __init__(self, containers=(), members=None, events=None, fail=None):
        self.rows = list(containers)           # /containers/json rows
        self.members = members or {}           # /networks/{id} "Containers"
        self.events_script = events or []      # one item per events() call: list or exception
        self.fail = fail                       # exception raised by every call
        self.timeout = None
        self.calls = []
        self.timeouts = []
        self.closed = threading.Event()

    def _call(self, name, *args):
        self.calls.append((name,) + args)
        self.timeouts.append(self.timeout)
        if self.fail:
            raise self.fail

    def inspect_network(self, nid):
        self._call("inspect_network", nid)
        return {"Id": nid, "Containers": dict(self.members)}

    def networks(self):
        self._call("networks", None)
        return [{"Id": NID}]

    def containers(self, all=False, filters=None):
        self._call("containers", filters)
        assert all is True
        if not filters or "network" in filters:
            return list(self.rows)
        if "id" in filters:
            return [r for r in self.rows if r["Id"].startswith(filters["id"][0])]
        (pattern,) = filters["name"]
        return [r for r in self.rows if any(re.search(pattern, n) for n in r["Names"])]  # as dockerd

    def inspect_container(self, *args, **_k):
        self.calls.append(("inspect_container",) + args)  # recorded: the resolver swallows errors
        raise AssertionError("inspect_container blocks on a starting container: never call it")

    def events(self, since=None, filters=None, decode=None):
        self._call("events", filters)
        item = self.events_script.pop(0) if self.events_script else StopAfter()
        if isinstance(item, BaseException):
            raise item
        return Stream(item) if type(item) is list else item  # else a stream object of the test


class Stream(list):
    def close(self):
        pass


class StopAfter:
    """A stream that blocks until closed (the idle engine)."""

    def __init__(self):
        self.done = threading.Event()

    def __iter__(self):
        self.done.wait(5)
        return iter(())

    def close(self):
        self.done.set()


def row(name, labels, cid=CID):
    return {"Id": cid, "Names": [f"/{name}"], "Labels": labels, "State": "created"}


def joining(name="web-1", eid=EID):
    return {f"ep-{eid}": {"Name": name, "EndpointID": eid}}


def resolver(client, **kw):
    return LabelResolver(client_factory=lambda timeout: client, **kw)


# --- at Join -----------------------------------------------------------------
def test_join_reads_the_label():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining())
    ep = resolver(client).resolve_at_join(network(), endpoint())
    assert (ep.segment, ep.quarantine, ep.container, ep.container_id) == ("web", None, "web-1", CID)
    assert [c[0] for c in client.calls] == ["inspect_network", "containers"]
    assert client.calls[1][1] == {"name": ["^/web\\-1$"]}


def test_join_quarantines_an_empty_label():
    client = FakeClient([row("web-1", {"secnet.segment": ""})], joining())
    ep = resolver(client).resolve_at_join(network(), endpoint())
    assert ep.segment is None
    assert ep.quarantine == ("label secnet.segment='' is not a valid segment name: "
                             "a segment name must not be empty")


def test_join_unlabelled_gets_the_networks_default_segment():
    client = FakeClient([row("web-1", {"other": "x"})], joining())
    ep = resolver(client).resolve_at_join(network(default_segment="misc"), endpoint())
    assert (ep.segment, ep.quarantine, ep.container) == ("misc", None, "web-1")


def test_join_uses_the_networks_label_key():
    client = FakeClient([row("web-1", {"com.docker.compose.service": "api", "secnet.segment": "web"})],
                        joining())
    ep = resolver(client).resolve_at_join(network(segment_label="com.docker.compose.service"), endpoint())
    assert ep.segment == "api"


def test_join_driver_opt_wins_without_any_call():
    calls = []
    res = LabelResolver(client_factory=lambda timeout: calls.append(1))
    ep = res.resolve_at_join(network(), endpoint(segment_opt="api", segment="api"))
    assert (ep.segment, ep.quarantine) == ("api", None)
    assert calls == []


@pytest.mark.parametrize("fail", [TimeoutError("read timed out"), ConnectionRefusedError(), LookupTimeout()])
def test_join_failure_leaves_the_endpoint_unchanged(fail):
    ep = endpoint()
    assert resolver(FakeClient(fail=fail)).resolve_at_join(network(), ep) is ep


def test_join_factory_failure_leaves_the_endpoint_unchanged():
    def factory(timeout):
        raise ConnectionRefusedError("engine not listening")
    ep = endpoint()
    assert LabelResolver(client_factory=factory).resolve_at_join(network(), ep) is ep


def test_join_endpoint_not_listed_leaves_it_unchanged():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining(eid="f" * 64))
    ep = endpoint()
    assert resolver(client).resolve_at_join(network(), ep) is ep


def test_join_container_not_listed_leaves_it_unchanged():
    client = FakeClient([row("other", {"secnet.segment": "web"})], joining())
    ep = endpoint()
    assert resolver(client).resolve_at_join(network(), ep) is ep


def test_join_finds_an_endpoint_keyed_by_container_id():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], {CID: {"Name": "web-1", "EndpointID": EID}})
    assert resolver(client).resolve_at_join(network(), endpoint()).segment == "web"


def test_join_calls_share_one_deadline():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining())
    resolver(client, lookup_timeout=0.5).resolve_at_join(network(), endpoint())
    first, second = client.timeouts
    assert 0 < second <= first <= 0.5


def test_join_gives_up_when_the_deadline_has_passed():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining())
    slow = client.inspect_network

    def inspect_network(nid):
        time.sleep(0.06)
        return slow(nid)
    client.inspect_network = inspect_network
    ep = endpoint()
    started = time.monotonic()
    assert resolver(client, lookup_timeout=0.05).resolve_at_join(network(), ep) is ep
    assert time.monotonic() - started < 0.5
    assert [c[0] for c in client.calls] == ["inspect_network"]  # no call after the deadline


def test_each_request_thread_gets_its_own_client():
    made = []

    def factory(timeout):
        made.append(FakeClient([row("web-1", {"secnet.segment": "web"})], joining()))
        return made[-1]
    res = LabelResolver(client_factory=factory)
    res.resolve_at_join(network(), endpoint())
    res.resolve_at_join(network(), endpoint())
    t = threading.Thread(target=res.resolve_at_join, args=(network(), endpoint()))
    t.start()
    t.join()
    assert len(made) == 2


# --- the watcher ---------------------------------------------------------------
class FakeState:
    def __init__(self, net, eps):
        self.net = net
        self.eps = {ep.id: ep for ep in eps}

    def get_network(self, nid):
        return self.net if nid == self.net.id else None

    def endpoints(self, nid=None):
        return [ep for ep in self.eps.values() if nid in (None, ep.network_id)]

    def networks(self):
        return [self.net] if self.net is not None else []


class FakeDriver:
    def __init__(self, net, eps=()):
        self.state = FakeState(net, eps)
        self.applied = []
        self.renamed = []
        self.deleted = []
        self.applied_event = threading.Event()

    def apply_resolution(self, endpoint_id, container, container_id, segment, quarantine):
        self.applied.append((endpoint_id, container, container_id, segment, quarantine))
        ep = self.state.eps[endpoint_id]
        self.state.eps[endpoint_id] = ep.evolve(container=container, container_id=container_id,
                                                segment=segment, quarantine=quarantine)
        self.applied_event.set()

    def delete_endpoint(self, req):
        self.deleted.append(req.endpoint_id)
        self.state.eps.pop(req.endpoint_id, None)

    def rename_containers(self, names):
        self.renamed.append(dict(names))
        for eid, ep in list(self.state.eps.items()):
            if ep.container_id in names:
                self.state.eps[eid] = ep.evolve(container=names[ep.container_id])
        return len(names)


def connect_event(cid=CID, nid=NID):
    return {"Type": "network", "Action": "connect", "time": 1,
            "Actor": {"ID": nid, "Attributes": {"container": cid, "name": "net", "type": "secnet"}}}


def run_watcher(res, driver, until, timeout=5.0):
    res.start(driver)
    try:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        res.stop()
    assert until()


def test_connect_event_resolves_the_endpoint():
    driver = FakeDriver(network())
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], {CID: {"Name": "web-1", "EndpointID": EID}})

    class Late(list):  # the endpoint appears (join failed to resolve it) before the event
        def __iter__(self):
            driver.state.eps[EID] = endpoint()
            return iter([connect_event()])

        def close(self):
            pass
    client.events_script = [Late()]
    run_watcher(resolver(client, sleep=lambda s: time.sleep(0.01)), driver, lambda: driver.applied)
    assert driver.applied[0] == (EID, "web-1", CID, "web", None)
    assert ("containers", {"id": [CID]}) in client.calls
    assert ("events", {"type": ["network", "container"], "event": ["connect", "rename"]}) in client.calls


def test_connect_event_quarantines_a_bad_label():
    driver = FakeDriver(network(), [endpoint()])
    client = FakeClient([row("web-1", {"secnet.segment": "bad label"})],
                        {CID: {"Name": "web-1", "EndpointID": EID}}, events=[[connect_event()]])
    run_watcher(resolver(client, sleep=lambda s: time.sleep(0.01)), driver, lambda: driver.applied)
    eid, name, cid, segment, quarantine = driver.applied[0]
    assert (eid, name, cid, segment) == (EID, "web-1", CID, None)
    assert quarantine.startswith("label secnet.segment='bad label' is not a valid segment name")


def test_resolved_endpoints_cost_no_docker_call():
    done = endpoint(segment="web", container="web-1", container_id=CID)
    driver = FakeDriver(network(), [done])
    client = FakeClient([row("web-1", {})], {CID: {"Name": "web-1", "EndpointID": EID}},
                        events=[Stream([connect_event(), connect_event(nid="x" * 64)])])
    res = resolver(client, sleep=lambda s: None)
    run_watcher(res, driver, lambda: len([c for c in client.calls if c[0] == "events"]) >= 2)
    # each (re)connect re-reads the containers once (a list and the network's members);
    # the events themselves cost nothing
    events = len([c for c in client.calls if c[0] == "events"])
    assert [c for c in client.calls if c[0] not in ("events", "networks")] == \
        [("containers", None), ("inspect_network", NID)] * events
    assert driver.applied == []


def rename_event(name, cid=CID, old="/web-1"):
    return {"Type": "container", "Action": "rename", "id": cid,
            "Actor": {"ID": cid, "Attributes": {"name": name, "oldName": old, "image": "x"}}}


def test_a_rename_event_renames_the_containers_endpoints():
    done = endpoint(segment="web", container="web-1", container_id=CID)
    other = endpoint("f" * 64, segment="web", container="db", container_id="d" * 64)
    driver = FakeDriver(network(), [done, other])
    client = FakeClient([row("web-1", {}), row("db", {}, cid="d" * 64)])

    class Renamed(list):  # the engine renames, then sends the event
        def __iter__(self):
            client.rows[0] = row("web-2", {})
            return iter([rename_event("web-2")])

        def close(self):
            pass
    client.events_script = [Renamed()]
    run_watcher(resolver(client, sleep=lambda s: None), driver,
                lambda: driver.state.eps[EID].container == "web-2")
    assert driver.state.eps["f" * 64].container == "db"
    assert {CID: "web-2"} in driver.renamed          # the event's own call (a catch-up names all)


def test_catch_up_follows_renames_missed_while_away():
    done = endpoint(segment="web", container="web-1", container_id=CID)
    driver = FakeDriver(network(), [done])
    client = FakeClient([row("api", {})])          # renamed while the stream was down
    run_watcher(resolver(client, sleep=lambda s: None), driver,
                lambda: driver.state.eps[EID].container == "api")


def test_refresh_names_asks_for_one_network():
    driver = FakeDriver(network(), [endpoint(segment="web", container="web-1", container_id=CID)])
    client = FakeClient([row("api", {})])
    res = resolver(client)
    res.driver = driver
    assert res.refresh_names(network_id=NID) == 1
    assert client.calls == [("containers", {"network": [NID]})]
    assert driver.state.eps[EID].container == "api"


def test_catch_up_on_start_resolves_pending_endpoints():
    eid2, cid2 = "d" * 64, "b" * 64
    eid3 = "a" * 64
    pending = [endpoint(), endpoint(eid2), endpoint(eid3, segment_opt="api", segment="api")]
    driver = FakeDriver(network(), pending)
    client = FakeClient(
        [row("web-1", {"secnet.segment": "web"}), row("plain", {}, cid=cid2), row("opt", {}, cid="9" * 64)],
        {CID: {"Name": "web-1", "EndpointID": EID},
         f"ep-{eid2}": {"Name": "plain", "EndpointID": eid2},   # created, not started yet
         "9" * 64: {"Name": "opt", "EndpointID": eid3}})
    run_watcher(resolver(client), driver, lambda: len(driver.applied) == 3)
    assert sorted(driver.applied) == sorted([
        (EID, "web-1", CID, "web", None),
        (eid2, "plain", cid2, "default", None),
        (eid3, "opt", "9" * 64, "api", None),       # the driver-opt wins; the name is filled in
    ])


def test_catch_up_skips_endpoints_docker_does_not_list():
    driver = FakeDriver(network(), [endpoint()])
    client = FakeClient(members={})
    res = resolver(client)
    res.driver = driver
    assert res.catch_up(client) == 0
    assert driver.applied == []


def test_stream_errors_reconnect_with_exponential_backoff():
    driver = FakeDriver(network(), [endpoint()])
    waits = []
    failures = [ConnectionRefusedError("no engine")] * 9
    client = FakeClient([row("web-1", {"secnet.segment": "web"})],
                        {CID: {"Name": "web-1", "EndpointID": EID}}, events=list(failures))
    res = resolver(client, sleep=waits.append)
    run_watcher(res, driver, lambda: driver.applied)
    assert waits[:9] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert driver.applied == [(EID, "web-1", CID, "web", None)]  # caught up once connected
    assert res.connects == 1


def test_backoff_starts_afresh_after_a_connection():
    driver = FakeDriver(network())
    waits = []
    client = FakeClient(events=[OSError("x"), OSError("x"), Stream([]), OSError("x")])
    res = resolver(client, sleep=waits.append)
    run_watcher(res, driver, lambda: len(waits) >= 4)
    assert waits[:4] == [BACKOFF_MIN, 2 * BACKOFF_MIN, BACKOFF_MIN, 2 * BACKOFF_MIN]
    assert max(waits) <= BACKOFF_MAX


def test_stop_ends_a_thread_blocked_on_an_idle_stream():
    driver = FakeDriver(network())
    client = FakeClient()  # events() returns a stream that blocks until closed
    res = resolver(client)
    res.start(driver)
    time.sleep(0.05)
    started = time.monotonic()
    res.stop()
    assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name == "secnet-labels"]


def test_no_client_is_built_before_it_is_needed():
    made = []
    res = LabelResolver(client_factory=lambda timeout: made.append(timeout))
    res.forget(endpoint())
    assert made == []
    assert LabelResolver().base_url  # the default factory is not called either


def test_catch_up_counts_what_it_resolved():
    driver = FakeDriver(network(), [endpoint(), endpoint("d" * 64)])
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], {CID: {"Name": "web-1", "EndpointID": EID}})
    res = resolver(client)
    res.driver = driver
    assert res.catch_up(client) == 1            # the other one Docker does not list
    assert res.catch_up(client) == 0            # nothing left that Docker knows
    assert [a[0] for a in driver.applied] == [EID]


def test_connect_event_resolves_only_that_container_when_listed():
    other_eid = "d" * 64
    driver = FakeDriver(network(), [endpoint(), endpoint(other_eid)])
    client = FakeClient([row("web-1", {"secnet.segment": "web"}), row("starting", {}, cid="b" * 64)],
                        {CID: {"Name": "web-1", "EndpointID": EID},
                         f"ep-{other_eid}": {"Name": "starting", "EndpointID": other_eid}})
    res = resolver(client)
    res.driver = driver
    res._handle_event(client, connect_event())
    assert driver.applied == [(EID, "web-1", CID, "web", None)]
    assert [c for c in client.calls if c[0] == "containers"] == [("containers", {"id": [CID]})]


def test_connect_event_falls_back_to_every_pending_endpoint():
    driver = FakeDriver(network(), [endpoint()])
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining())  # still "ep-" keyed
    res = resolver(client)
    res.driver = driver
    res._handle_event(client, connect_event())
    assert driver.applied == [(EID, "web-1", CID, "web", None)]


def test_events_of_other_networks_and_kinds_are_ignored():
    driver = FakeDriver(network(), [endpoint()])
    client = FakeClient(members=joining())
    res = resolver(client)
    res.driver = driver
    res._handle_event(client, connect_event(nid="x" * 64))
    res._handle_event(client, dict(connect_event(), Action="disconnect"))
    assert client.calls == [] and driver.applied == []


def test_nothing_asks_for_the_container_lock():
    """``GET /containers/{id}/json`` waits for the container lock that dockerd
    holds while it waits on our Join: only lock-free calls are allowed."""
    import ast
    import inspect
    import plugin.driver.labels as labels
    tree = ast.parse(inspect.getsource(labels))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    urls = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and "/containers/" in n.value]
    assert "inspect_container" not in attrs and urls == []
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining())
    resolver(client).resolve_at_join(network(), endpoint())
    driver = FakeDriver(network(), [endpoint()])
    res = resolver(client)
    res.driver = driver
    res.catch_up(client)
    res._handle_event(client, connect_event())
    assert {c[0] for c in client.calls} == {"inspect_network", "containers", "networks"}


def test_a_successful_join_lookup_ends_the_watchers_backoff_wait():
    client = FakeClient([row("web-1", {"secnet.segment": "web"})], joining())
    res = resolver(client)
    waiter = threading.Thread(target=res._sleep, args=(30,))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert res.resolve_at_join(network(), endpoint()).segment == "web"
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - started < 2


def test_a_broken_stream_reconnects_without_growing_the_backoff():
    class Broken(list):
        def __iter__(self):
            raise ValueError("not JSON")

        def close(self):
            pass
    waits = []
    client = FakeClient(events=[Broken(), Broken(), OSError("x")])
    res = resolver(client, sleep=waits.append)
    run_watcher(res, FakeDriver(network()), lambda: len(waits) >= 3)
    assert waits[:3] == [BACKOFF_MIN, BACKOFF_MIN, 2 * BACKOFF_MIN]
    assert res.connects >= 2


def test_connect_hooks_run_on_every_reconnect_and_a_failing_one_does_not_stop_the_watcher():
    # the engine may be a new one after each reconnect (engine restart): detection hooks run again
    seen = []
    client = FakeClient(events=[Stream([]), OSError("engine away"), Stream([]), Stream([])])
    res = resolver(client, sleep=lambda s: None)
    res.connect_hooks.append(lambda c: 1 / 0)
    res.connect_hooks.append(seen.append)
    run_watcher(res, FakeDriver(network()), lambda: len(seen) >= 3)
    assert all(c is client for c in seen) and res.connects >= 3


def test_catch_up_removes_endpoints_that_outlived_their_containers():
    """Removed (or restarted with a new endpoint) while the daemon was down: Docker never
    calls DeleteEndpoint again. Endpoints not resolved yet (no container id) are left alone."""
    live = endpoint(segment="web", container="web-1", container_id=CID)
    removed = endpoint("f" * 64, segment="web", container="old", container_id="d" * 64)
    restarted = endpoint("a" * 64, segment="web", container="re", container_id="b" * 64)
    starting = endpoint("9" * 64)
    driver = FakeDriver(network(), [live, removed, restarted, starting])
    client = FakeClient([row("web-1", {}), row("re", {}, cid="b" * 64)],
                        {CID: {"Name": "web-1", "EndpointID": EID},
                         "b" * 64: {"Name": "re", "EndpointID": "7" * 64}})
    run_watcher(resolver(client, sleep=lambda s: None), driver, lambda: len(driver.deleted) == 2)
    assert sorted(driver.deleted) == sorted(["f" * 64, "a" * 64])
    assert set(driver.state.eps) == {EID, "9" * 64}


def test_an_endpoint_resolved_after_the_containers_were_listed_is_not_judged_by_that_list():
    driver = FakeDriver(network(), [])
    client = FakeClient([])                                    # listed before the container started
    res = resolver(client)
    res.driver = driver
    driver.state.eps[EID] = endpoint(segment="web", container="web-1", container_id=CID)  # joined since
    assert res.drop_gone_endpoints(client, {}, known=set()) == 0
    assert res.drop_gone_endpoints(client, {}, known={EID}) == 1
