"""plugin.driver.engineapi: the Join's two engine reads over a unix socket, against a small
HTTP/1.1 server on a real unix socket (what it sends, what it returns, errors, reconnects),
and LabelResolver's default Join client going through it."""
import http.server
import json
import socketserver
import threading
import urllib.parse

import pytest

from plugin.driver.engineapi import EngineError, UnixEngineClient, socket_path
from plugin.driver.labels import LabelResolver

from label_fakes import CID, EID, NID, endpoint, network


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path):
        self.seen, self.status, self.close_after = [], 200, False
        self.connections = 0
        super().__init__(path, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.server.connections += 1

    def address_string(self):
        return "test"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        self.server.seen.append((url.path, urllib.parse.parse_qs(url.query)))
        if url.path == f"/networks/{NID}":
            body = {"Id": NID, "Containers": {f"ep-{EID}": {"Name": "web-1", "EndpointID": EID}}}
        else:
            body = [{"Id": CID, "Names": ["/web-1"], "Labels": {"secnet.segment": "web"}}]
        data = json.dumps(body if self.server.status == 200 else {"message": "no such thing"}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(data)))
        if self.server.close_after:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        if self.server.close_after:
            self.close_connection = True


@pytest.fixture
def engine(tmp_path):
    server = _Engine(str(tmp_path / "docker.sock"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_two_reads_send_what_the_sdk_sends_and_return_the_json(engine):
    client = UnixEngineClient(engine.server_address, 2.0)
    assert client.inspect_network(NID)["Containers"][f"ep-{EID}"]["Name"] == "web-1"
    rows = client.containers(all=True, filters={"name": ["^/web\\-1$"]})
    assert rows[0]["Labels"] == {"secnet.segment": "web"}
    assert engine.seen[0] == (f"/networks/{NID}", {})
    assert engine.seen[1] == ("/containers/json", {"all": ["1"], "filters": ['{"name": ["^/web\\\\-1$"]}']})
    assert engine.connections == 1   # the connection is kept between the calls
    client.close()


def test_an_error_status_raises_naming_the_path_and_status(engine):
    engine.status = 404
    with pytest.raises(EngineError, match=r"GET /networks/n+: 404"):
        UnixEngineClient(engine.server_address, 2.0).inspect_network(NID)


def test_a_connection_the_engine_closed_is_opened_again(engine):
    engine.close_after = True
    client = UnixEngineClient(engine.server_address, 2.0)
    for _ in range(3):
        assert client.inspect_network(NID)["Id"] == NID
    assert engine.connections == 3


def test_a_kept_connection_that_broke_is_retried_once_on_a_new_one(engine):
    client = UnixEngineClient(engine.server_address, 2.0)
    client.inspect_network(NID)
    client._conn.sock.close()   # as if the engine had gone away meanwhile and come back
    client._conn.sock = None
    assert client.inspect_network(NID)["Id"] == NID


def test_no_engine_raises_an_oserror(tmp_path):
    with pytest.raises(OSError):
        UnixEngineClient(str(tmp_path / "none.sock"), 0.5).inspect_network(NID)


@pytest.mark.parametrize("host, path", [("unix:///var/run/docker.sock", "/var/run/docker.sock"),
                                        ("unix://var/run/docker.sock", "/var/run/docker.sock"),
                                        ("tcp://127.0.0.1:2375", None), ("https://h:2376", None)])
def test_socket_path(host, path):
    assert socket_path(host) == path


def test_the_resolvers_join_goes_through_it_on_a_unix_engine(engine):
    res = LabelResolver(docker_host=f"unix://{engine.server_address}")
    ep = res.resolve_at_join(network(), endpoint())
    assert (ep.segment, ep.container, ep.container_id) == ("web", "web-1", CID)
    assert isinstance(res._local.client, UnixEngineClient)
    assert [p for p, _ in engine.seen] == [f"/networks/{NID}", "/containers/json"]
