"""plugin.driver.labels at Join: label, driver-opt, default segment, quarantine, deadlines (fake Docker client)."""
import threading
import time

import pytest

from plugin.driver.labels import LabelResolver, LookupTimeout

from label_fakes import CID, EID, endpoint, FakeClient, joining, network, resolver, row


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


@pytest.mark.parametrize("host, trusted", [("unix:///run/nothing-here.sock", False),
                                           ("tcp://127.0.0.1:1", True)])
def test_the_engine_client_skips_proxy_settings_on_a_unix_socket_only(monkeypatch, host, trusted):
    """requests reads the environment's proxy settings on every call (~0.5 ms): no proxy
    sits on a unix socket, but a tcp:// engine may be behind one."""
    import docker
    real = docker.APIClient
    monkeypatch.setattr(docker, "APIClient", lambda **kw: real(**{**kw, "version": "1.41"}))  # no engine asked
    client = LabelResolver(docker_host=host)._docker_client(timeout=1)
    assert client.trust_env is trusted
