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


def test_log_follow_waits_out_a_daemon_restart(monkeypatch, capsys):
    """`secnet log --follow` goes on across a daemon restart (docs/visibility.md; finding U6-F3)."""
    from plugin.cli.client import DaemonUnreachable
    entry = {"time": 0, "network": NET_ID}
    answers = [{"entries": [], "cursor": 5}, DaemonUnreachable("cannot reach the secnet daemon"),
               DaemonUnreachable("cannot reach the secnet daemon"), {"entries": [entry], "cursor": 6}]
    seen = []

    def call(path, body, timeout=30.0):
        seen.append(body.get("since"))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(_seconds):
        if not answers:
            raise KeyboardInterrupt
    monkeypatch.setattr(cli, "call", call)
    monkeypatch.setattr(cli, "resolve_network", lambda ref: ref)
    monkeypatch.setattr(cli.time, "sleep", sleep)
    assert cli.main(["--json", "log", "--follow"]) == 0
    assert seen == [None, 5, 5, 5], seen
    assert '"network": "' + NET_ID in capsys.readouterr().out


def test_log_follow_still_ends_on_other_errors(monkeypatch, capsys):
    answers = [{"entries": [], "cursor": 5}, CliError("no secnet network 'x'")]
    monkeypatch.setattr(cli, "call", lambda path, body, timeout=30.0: (
        answers.pop(0) if not isinstance(answers[0], Exception) else (_ for _ in ()).throw(answers.pop(0))))
    monkeypatch.setattr(cli, "resolve_network", lambda ref: ref)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    assert cli.main(["log", "x", "--follow"]) == 1
    assert capsys.readouterr().err.strip() == "secnet: no secnet network 'x'"


@pytest.mark.parametrize("typed, want", [("Audit", "audit"), ("ENFORCE", "enforce"), ("audit", "audit")])
def test_mode_values_are_case_insensitive_as_at_network_create(typed, want):
    assert cli.parser().parse_args(["mode", "net1", typed]).mode == want
