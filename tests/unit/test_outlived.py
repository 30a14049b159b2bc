"""Which endpoints outlived their containers (plugin.driver.outlived), judged from
fake engine answers shaped as moby 20.10 gives them: ``GET /networks/{id}``
``Containers`` keyed by container id (joined) or ``ep-<endpoint id>`` (joining),
and the ``State`` of ``/containers/json?all=1`` rows."""
from label_fakes import CID, EID, FakeClient, FakeDriver, endpoint, network, resolver, row

from plugin.driver.outlived import listed_endpoints, outlived, why_gone

OTHER = "b" * 64


def ep(eid=EID, cid=CID):
    return endpoint(eid, segment="web", container="web-1", container_id=cid)


def test_listed_endpoints_by_id_and_by_joining_key():
    members = {CID: {"Name": "a", "EndpointID": EID}, "ep-" + "7" * 64: {"Name": "b"}}
    assert listed_endpoints(members) == {EID, "7" * 64}


def test_an_endpoint_the_engine_lists_stays_whatever_its_containers_state():
    for state in ("running", "created", "exited", "restarting"):
        assert why_gone(ep(), {CID: {"EndpointID": EID}}, {CID: state}) is None
    # a join in flight: the network lists it under ep-<id> before the container runs
    assert why_gone(ep(), {"ep-" + EID: {"Name": "web-1", "EndpointID": EID}}, {CID: "created"}) is None
    assert why_gone(ep(), {"ep-" + EID: {"Name": "web-1"}}, {CID: "exited"}) is None


def test_a_container_stopped_while_the_daemon_was_down_loses_its_endpoint():
    """U13-F1: the container is listed (exited), the network has no entry for it."""
    assert "exited" in why_gone(ep(), {}, {CID: "exited"})
    assert why_gone(ep(), {OTHER: {"EndpointID": "9" * 64}}, {CID: "dead", OTHER: "running"})


def test_removed_and_restarted_containers_lose_their_endpoints():
    assert why_gone(ep(), {}, {}) == "its container is gone"
    assert "7777777777" in why_gone(ep(), {CID: {"EndpointID": "7" * 64}}, {CID: "running"})


def test_a_running_container_the_network_does_not_list_keeps_its_endpoint():
    # odd (the engine should list it): a removal would cut a running container, so it stays
    for state in ("running", "paused"):
        assert why_gone(ep(), {}, {CID: state}) is None


def test_outlived_picks_only_the_gone_ones_in_order():
    eps = [ep(), ep("1" * 64, "2" * 64), ep("3" * 64, "4" * 64), ep("5" * 64, "6" * 64)]
    members = {CID: {"EndpointID": EID}, "4" * 64: {"EndpointID": "3" * 64}}
    states = {CID: "running", "2" * 64: "exited", "4" * 64: "running"}
    assert [(e.id[0], why) for e, why in outlived(eps, members, states)] == [
        ("1", "its container is exited and the network lists no endpoint for it"),
        ("5", "its container is gone")]


def test_catch_up_removes_the_endpoint_of_a_container_stopped_while_down():
    stopped = ep()
    running = ep("a" * 64, OTHER)
    driver = FakeDriver(network(), [stopped, running])
    client = FakeClient([dict(row("web-1", {}), State="exited"),
                         dict(row("api", {}, cid=OTHER), State="running")],
                        {OTHER: {"Name": "api", "EndpointID": "a" * 64}})
    res = resolver(client)
    res.driver = driver
    res.catch_up(client)
    assert driver.deleted == [EID]
    assert set(driver.state.eps) == {"a" * 64}
