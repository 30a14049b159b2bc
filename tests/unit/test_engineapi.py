"""plugin.driver.engineapi: the Join's two engine reads over a kept-alive unix-socket connection
(a real HTTP/1.1 server on a socket in a temporary directory)."""
import http.server
import json
import socketserver
import threading
import urllib.parse

import pytest

from plugin.driver.engineapi import EngineError, EngineReader, unix_socket_path
from plugin.driver.labels import LabelResolver

from label_fakes import NID, endpoint, joining, network

NETWORK = {"Id": "n1", "Containers": {"ep-e1": {"Name": "web-1", "EndpointID": "e1"}}}
ROWS = [{"Id": "c1", "Names": ["/web-1"], "Labels": {"secnet.segment": "web"}}]


class Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path):
        super().__init__(path, Handler)
        self.connections, self.requests, self.close_after = 0, [], None
        self.networks = {"n1": NETWORK}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.server.connections += 1

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        name = url.path.rsplit("/", 1)[1]
        if url.path.startswith("/networks/") and name in self.server.networks:
            self._send(200, self.server.networks[name])
        elif url.path == "/containers/json":
            self._send(200, ROWS)
        else:
            self._send(404, {"message": f"network {name} not found"})
        if self.server.close_after is not None and len(self.server.requests) >= self.server.close_after:
            self.close_connection = True   # as an engine ending an idle keep-alive connection

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def engine(tmp_path):
    server = Engine(str(tmp_path / "docker.sock"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_both_reads_decode_as_docker_py_does_and_share_one_connection(engine):
    reader = EngineReader(engine.server_address, timeout=2)
    try:
        assert reader.inspect_network("n1") == NETWORK
        assert reader.containers(all=True, filters={"name": ["^/web\\-1$"]}) == ROWS
        assert reader.inspect_network("n1") == NETWORK
    finally:
        reader.close()
    assert engine.connections == 1
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(engine.requests[1]).query)
    assert query == {"all": ["1"], "filters": ['{"name": ["^/web\\\\-1$"]}']}


def test_an_error_status_raises_with_the_engines_message(engine):
    reader = EngineReader(engine.server_address, timeout=2)
    with pytest.raises(EngineError, match="404 network nx not found"):
        reader.inspect_network("nx")
    assert reader.inspect_network("n1") == NETWORK   # the next call goes on afresh
    reader.close()


def test_a_connection_the_engine_closed_is_opened_again(engine):
    engine.close_after = 1
    reader = EngineReader(engine.server_address, timeout=2)
    assert reader.inspect_network("n1") == NETWORK
    assert reader.containers(all=True) == ROWS
    reader.close()
    assert engine.connections == 2


def test_no_engine_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        EngineReader(str(tmp_path / "none.sock"), timeout=0.5).inspect_network("n1")


def test_unix_socket_path():
    assert unix_socket_path("unix://var/run/docker.sock") == "/var/run/docker.sock"
    assert unix_socket_path("unix:///run/x.sock") == "/run/x.sock"
    assert unix_socket_path("tcp://127.0.0.1:2375") is None


def test_the_join_lookup_reads_through_the_reader_by_default(engine):
    engine.networks[NID] = {"Id": NID, "Containers": joining("web-1")}
    resolver = LabelResolver(docker_host=f"unix://{engine.server_address}")
    found = resolver.resolve_at_join(network(), endpoint())
    found_again = resolver.resolve_at_join(network(), endpoint())
    assert isinstance(resolver._local.client, EngineReader)
    resolver._local.client.close()
    assert (found.segment, found.container, found.container_id) == ("web", "web-1", "c1")
    assert found_again == found
    assert engine.connections == 1
    assert [r.split("?")[0] for r in engine.requests] == [f"/networks/{NID}", "/containers/json"] * 2
