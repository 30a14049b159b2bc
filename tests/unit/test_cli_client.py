"""The CLI's HTTP exchange (a real unix socket, a scripted server) and its argument split."""
from __future__ import annotations

import json
import socket
import threading

import pytest
from hypothesis import given, strategies as st

from plugin import config
from plugin.cli import client
from plugin.cli.main import _parsed, _rule_arguments, main, parser


def serve_once(path: str, answer: bytes, seen: list) -> threading.Thread:
    """A server on ``path`` that reads one request (to the end of its body), sends
    ``answer`` and closes: what the CLI's requests meet."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn, srv:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            seen.append((head.decode(), body))
            conn.sendall(answer)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_call_posts_json_and_reads_the_answer_to_its_length(tmp_path, monkeypatch):
    path, seen = str(tmp_path / "d.sock"), []
    out = json.dumps({"rules": ["a->b:tcp/1"] * 3}).encode()
    thread = serve_once(path, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n" % len(out) + out + b"junk", seen)
    monkeypatch.setenv("SECNET_SOCKET", path)
    assert client.call("/secnet/policy", {"network": "n", "rules": ["x"]}) == {"rules": ["a->b:tcp/1"] * 3}
    thread.join(5)
    head, body = seen[0]
    assert head.startswith("POST /secnet/policy HTTP/1.")
    assert json.loads(body) == {"network": "n", "rules": ["x"]}


def test_an_error_answer_is_a_cli_error_with_the_daemons_message(tmp_path, monkeypatch):
    path = str(tmp_path / "d.sock")
    out = b'{"Err": "no secnet network \'zz\'"}'
    serve_once(path, b"HTTP/1.0 404 NOT FOUND\r\n\r\n" + out, [])
    monkeypatch.setenv("SECNET_SOCKET", path)
    with pytest.raises(client.CliError, match="no secnet network 'zz'"):
        client.call("/secnet/show", {"network": "zz"})


def test_an_answer_that_is_not_http_or_no_daemon_is_one_line(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "d.sock")
    serve_once(path, b"hello", [])
    monkeypatch.setenv("SECNET_SOCKET", path)
    with pytest.raises(client.CliError, match="cannot reach the secnet daemon at "):
        client.call("/secnet/status", {})
    monkeypatch.setenv("SECNET_SOCKET", str(tmp_path / "none.sock"))
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("secnet: cannot reach the secnet daemon at ") and err.count("\n") == 1


def test_the_engine_lookup_reads_an_unchunked_answer(tmp_path):
    path = str(tmp_path / "docker.sock")
    body = json.dumps({"Id": "f" * 64, "Name": "shop"}).encode()
    serve_once(path, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body, [])
    assert client._engine_get(path, "/networks/shop") == {"Id": "f" * 64, "Name": "shop"}


def test_defaults_are_the_daemons(monkeypatch):
    monkeypatch.setattr(client, "managed_socket", lambda default="": "")   # (a managed plugin on this host)
    assert client.DEFAULT_SOCKET == config.Settings.socket
    assert client.DEFAULT_DOCKER_HOST == config.DEFAULT_DOCKER_HOST
    assert client.socket_path({}) == config.Settings.socket
    assert client.socket_path({"SECNET_SOCKET": "/x.sock", "SECNET_LOG_LEVEL": "debug"}) == "/x.sock"
    with pytest.raises(client.CliError, match="SECNET_LOG_LEVEL"):
        client.socket_path({"SECNET_LOG_LEVEL": "loud"})


def test_rule_arguments_bypass_argparse_only_for_plain_rule_edits():
    rules = [f"s{i}->s{i + 1}:tcp/80" for i in range(5)]
    assert _rule_arguments(["policy", "n", "set", *rules]) == (["policy", "n", "set"], rules)
    assert _rule_arguments(["policy", "n", "add", "a->b"]) == (["policy", "n", "add"], ["a->b"])
    for argv in (["policy", "n", "set"], ["policy", "n"], ["show", "n", "set", "x"],
                 ["policy", "n", "set", "-h"], ["policy", "n", "bogus", "a->b"]):
        assert _rule_arguments(argv) == (argv, None)


def test_a_plain_rule_edit_is_parsed_as_argparse_parses_it():
    for argv in (["policy", "shop", "set", "a->b", "c->d:tcp/80"], ["policy", "n-1", "remove", "x->y"]):
        short, rules = _rule_arguments(argv)
        expected = vars(parser().parse_args(argv))
        expected.pop("json")   # main sets it (--json is taken out of argv first)
        assert rules is not None and vars(_parsed(short, rules)) == expected


def test_a_large_answer_is_read_whole_across_many_reads(tmp_path):
    """A 3 MB answer (a policy listing of ~100,000 rules) arrives in many pieces."""
    path = str(tmp_path / "d.sock")
    out = json.dumps({"rules": [f"s{i}->s{i + 1}:tcp/{i % 65535 + 1}" for i in range(150000)]}).encode()
    serve_once(path, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out, [])
    status, body = client.exchange(path, "POST", "/secnet/policy", b"{}")
    assert status == 200 and body == out and len(out) > 3_000_000


@given(st.text())
def test_a_network_name_is_quoted_as_urllib_quotes_a_path_segment(text):
    from urllib.parse import quote
    try:
        expected = quote(text, safe="")
    except UnicodeEncodeError:   # a lone surrogate: both refuse it (resolve_network keeps the name)
        with pytest.raises(UnicodeEncodeError):
            client.quote(text)
        return
    assert client.quote(text) == expected


def test_the_engine_is_asked_for_the_quoted_name(tmp_path, monkeypatch):
    path = str(tmp_path / "engine.sock")
    seen = []
    serve_once(path, b'HTTP/1.0 200 OK\r\n\r\n{"Id": "abc"}', seen)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    assert client.resolve_network("my net/é") == "abc"
    assert seen[0][0].startswith("GET /networks/my%20net%2F%C3%A9 HTTP/1.0")


def test_the_cli_starts_without_the_modules_it_does_without():
    """Importing the CLI loads neither ``socket``, ``urllib.parse``, ``glob`` nor ``argparse``
    (each costs milliseconds of every command's start: see plugin.cli.client; argparse is
    imported when a command needs it, never for a plain rule edit)."""
    import subprocess
    import sys
    code = ("import sys, plugin.cli.main; print(' '.join(sorted({'socket', 'urllib.parse', 'glob', 'ipaddress', "
            "'selectors', 'argparse', 'gettext'} & set(sys.modules))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("answer", [b"", None])
def test_a_request_taken_and_not_answered_says_the_change_may_be_in_force(tmp_path, monkeypatch, answer):
    """U24-F6: a worker stopped or killed after it read `policy add` answered nothing, the
    rule came into force, and the CLI said only "cannot reach the daemon"."""
    path = str(tmp_path / "d.sock")
    if answer is None:   # reads the request, then never answers: the CLI's timeout
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        held = []
        threading.Thread(target=lambda: held.append(srv.accept()), daemon=True).start()
    else:                # closes the connection without a byte
        serve_once(path, answer, [])
    monkeypatch.setenv("SECNET_SOCKET", path)
    with pytest.raises(client.CliError, match="took the request but did not answer.*may be in force or not"):
        client.call("/secnet/policy", {"network": "n", "action": "add", "rules": ["a->b"]},
                    **({"timeout": 0.5} if answer is None else {}))


def test_a_rule_that_starts_with_the_arrow_goes_to_the_daemon_not_to_argparse():
    """U26-F6: `secnet policy n set '->api'` said "unrecognized arguments: ->api"."""
    assert _rule_arguments(["policy", "n", "set", "->api"]) == (["policy", "n", "set"], ["->api"])
    assert _rule_arguments(["policy", "n", "set", "->api", "-h"]) == (["policy", "n", "set", "->api", "-h"], None)


@pytest.mark.parametrize("verb", ["policy", "show", "mode", "explain", "verify"])
def test_a_command_without_its_network_names_what_is_missing(verb, capsys):
    """U26-F6: `secnet policy` said NETWORK and RULE were required; RULE is not."""
    assert main([verb]) == 2
    err = capsys.readouterr().err
    assert err == f"secnet: {verb}: NETWORK is missing (a name or id: secnet status lists them); see secnet {verb} --help\n"


def test_a_socket_nobody_listens_on_says_so(tmp_path, monkeypatch, capsys):
    """U26-F6: a socket file an ended daemon left gave "Connection refused" and no hint."""
    import socket as so
    path = str(tmp_path / "stale.sock")
    s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    s.bind(path)
    s.close()   # the file stays, nobody listens
    monkeypatch.setenv("SECNET_SOCKET", path)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "the socket is there but no daemon listens on it" in err and err.count("\n") == 1


def test_a_policy_edit_names_the_network_as_the_engine_does(monkeypatch, capsys):
    """U26-F6: `secnet policy shop add ...` answered with the id alone."""
    from plugin.cli import main as cli
    monkeypatch.setattr(client, "NAMES", {"ab" * 32: "shop"})   # as resolve_network leaves it
    monkeypatch.setattr(cli, "resolve_network", lambda ref: "ab" * 32)
    monkeypatch.setattr(cli, "call", lambda path, body, timeout=30.0: {"network": body["network"], "count": 3})
    assert main(["policy", "shop", "add", "web->db:tcp/5432"]) == 0
    assert capsys.readouterr().out == "network shop: 3 rules in force\n"
