"""The CLI finds the managed plugin's socket by itself (user10, U10-F3): with the plugin
installed as the README says (`docker plugin install ... --alias secnet`) and no legacy
daemon, a plain `secnet status` failed with "cannot reach the secnet daemon at
/run/docker/plugins/secnet.sock" until the user set SECNET_SOCKET to
/run/docker/plugins/<plugin id>/secnet.sock."""
from __future__ import annotations

import pytest

from plugin.cli import client


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A /run/docker/plugins of our own: the legacy socket's path, and make(id) for a managed one."""
    legacy = tmp_path / "secnet.sock"
    monkeypatch.setattr(client, "DEFAULT_SOCKET", str(legacy))

    def make(plugin_id: str):
        (tmp_path / plugin_id).mkdir()
        sock = tmp_path / plugin_id / "secnet.sock"
        sock.write_text("")
        return str(sock)
    return legacy, make


def test_the_one_managed_plugin_socket_is_used_when_there_is_no_legacy_socket(plugins):
    _legacy, make = plugins
    managed = make("3f" * 32)
    assert client.socket_path({}) == managed


def test_the_legacy_socket_and_secnet_socket_win(plugins, tmp_path):
    legacy, make = plugins
    make("3f" * 32)
    assert client.socket_path({"SECNET_SOCKET": "/x/y.sock"}) == "/x/y.sock"
    legacy.write_text("")
    assert client.socket_path({}) == str(legacy)


def test_no_guess_between_two_managed_plugins(plugins):
    legacy, make = plugins
    make("3f" * 32), make("4e" * 32)
    assert client.socket_path({}) == str(legacy)


def test_an_absent_socket_says_what_to_do(plugins):
    with pytest.raises(client.DaemonUnreachable, match="managed plugin set SECNET_SOCKET"):
        client.call("/secnet/status", {})
