"""plugin.driver.labels' event watcher: connect and rename events, catch-up, backoff, stop (fake Docker client)."""
import threading
import time

from plugin.driver.labels import BACKOFF_MAX, BACKOFF_MIN, LabelResolver

from label_fakes import (CID, EID, NID, FakeClient, FakeDriver, Stream, connect_event, endpoint, joining, network,
                         rename_event, resolver, row, run_watcher)


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


def test_a_rename_event_renames_the_containers_endpoints():
    done = endpoint(segment="web", container="web-1", container_id=CID)
    other = endpoint("f" * 64, segment="web", container="db", container_id="d" * 64)
    driver = FakeDriver(network(), [done, other])
    client = FakeClient([row("web-1", {}), row("db", {}, cid="d" * 64)],
                        {CID: {"Name": "web-1", "EndpointID": EID}, "d" * 64: {"Name": "db", "EndpointID": "f" * 64}})

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
    client = FakeClient([row("api", {})], {CID: {"Name": "api", "EndpointID": EID}})  # renamed while down
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


def test_catch_up_removes_a_network_the_engine_deleted_while_the_daemon_was_down():
    driver = FakeDriver(network())            # restored from state, not created by this process
    res = resolver(FakeClient(networks=()))
    res.driver = driver
    assert res.drop_gone_networks(FakeClient(networks=[NID])) == 0    # still listed: kept
    assert res.drop_gone_networks(FakeClient(networks=())) == 1
    assert driver.deleted_networks == [NID]


def test_catch_up_keeps_a_network_being_created_that_the_engine_does_not_list_yet():
    # Docker stores a network only after CreateNetwork answered: a catch-up that lists
    # the engine's networks meanwhile must not remove it (make demo right after start).
    driver = FakeDriver(network())
    driver.created_since_start.add(NID)
    res = resolver(FakeClient(networks=()))
    res.driver = driver
    assert res.drop_gone_networks(FakeClient(networks=())) == 0
    assert driver.deleted_networks == [] and driver.state.networks()
