"""With the engine unreachable, a network name cannot be mapped to its id (the daemon
knows ids only: Docker never tells a driver a network's name). `secnet show NAME`
then says so and that the id works, not that there is no such network (U18-F3); the
id does work. The CLI runs against the daemon's real routes (a real State) and a
DOCKER_HOST socket that nothing listens on."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from plugin.cli import client
from plugin.cli import main as cli
from plugin.daemon.api import Api
from plugin.daemon.app import create_app
from plugin.driver.state import NetworkRecord, State
from plugin.enforce.backend import Counters
from plugin.observe.droplog import DropLog
from plugin.observe.metrics import Metrics
from segmentation.compiler import compile_policy
from segmentation.options import parse_network_options

NID = "5e" * 32


class _Reconciler:
    repairs = 0

    def compiled(self, net):
        return compile_policy(net.options, [])

    def counters(self, net):
        return Counters()


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    """The CLI's `call` answered by the daemon's Flask app over a real State."""
    state = State(str(tmp_path / "state"))
    state.put_network(NetworkRecord(id=NID, bridge="sn-5e5e", mtu=1500, options=parse_network_options({})))
    reconciler, droplog = _Reconciler(), DropLog(str(tmp_path))
    driver = SimpleNamespace(state=state)
    app = create_app(driver, Api(driver, reconciler, droplog, Metrics(state, reconciler, droplog)))
    web = app.test_client()

    def call(path, body, timeout=30.0):
        resp = web.post(path, data=json.dumps(body))
        data = json.loads(resp.get_data(as_text=True))
        if resp.status_code != 200:
            raise client.CliError(data["Err"])
        return data
    monkeypatch.setattr(cli, "call", call)
    monkeypatch.setattr(client, "UNMAPPED", set(), raising=False)   # (each test its own)
    yield
    state.close()


def test_a_name_without_the_engine_says_the_engine_is_needed_and_the_id_works(daemon, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")   # nothing listens there
    assert cli.main(["show", "u18-lr-nftables"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("secnet: ") and "\n" not in err, err
    assert "'u18-lr-nftables'" in err and "Docker engine cannot be reached" in err and "id" in err, err
    assert "secnet status" in err, err
    # the id (and an id prefix) works without the engine
    assert cli.main(["show", NID]) == 0
    assert capsys.readouterr().out.startswith(f"network {NID[:12]} (bridge sn-5e5e")
    assert cli.main(["--json", "show", NID[:12]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == NID


def test_a_name_the_engine_does_not_know_is_still_no_secnet_network(daemon, monkeypatch, capsys):
    def engine(path, sdk_call):
        raise LookupError("engine answered 404")
    monkeypatch.setattr(client, "_engine", engine)
    assert cli.main(["show", "nosuch"]) == 1
    assert capsys.readouterr().err.strip() == "secnet: no secnet network 'nosuch'"
