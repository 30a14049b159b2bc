"""The CLI's one-line errors name NETWORK as the user typed it (finding U6-F2)."""
from __future__ import annotations

import pytest

from plugin.cli import main as cli
from plugin.cli.client import CliError

NET_ID = "9c5f0c757affbb91a2454be95cc89ed08029f18696fe5c42641fa376b5885305"


@pytest.fixture
def daemon_without(monkeypatch):
    """The engine resolves every name to NET_ID; the daemon has no such network."""
    monkeypatch.setattr(cli, "resolve_network", lambda ref: NET_ID)

    def call(path, body, timeout=30.0):
        raise CliError(f"no secnet network {body['network']!r}")
    monkeypatch.setattr(cli, "call", call)


@pytest.mark.parametrize("argv", [["show", "bridge"], ["policy", "bridge", "add", "a->b"],
                                  ["mode", "bridge"], ["--json", "verify", "bridge"],
                                  ["explain", "bridge", "a", "b", "tcp/1"], ["log", "bridge"]])
def test_a_docker_network_of_another_driver_is_named_as_typed(daemon_without, capsys, argv):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "'bridge'" in err[0] and NET_ID not in err[0], err[0]
    assert "not on this secnet daemon" in err[0], err[0]


def test_an_unknown_name_keeps_the_daemons_message(monkeypatch, capsys):
    monkeypatch.setattr(cli, "resolve_network", lambda ref: ref)   # the engine does not know it

    def call(path, body, timeout=30.0):
        raise CliError(f"no secnet network {body['network']!r}")
    monkeypatch.setattr(cli, "call", call)
    assert cli.main(["show", "u6-nosuch"]) == 1
    assert capsys.readouterr().err.strip() == "secnet: no secnet network 'u6-nosuch'"
