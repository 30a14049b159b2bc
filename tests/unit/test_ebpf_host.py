"""Whether this host can run `secnet.backend=ebpf`, as `docker network create` sees it:
the host check faked (an old kernel, no bpffs), the real Driver and app in front."""
from __future__ import annotations

import json

import pytest

from driver_fakes import FakeFirewall, FakeLinks, create_network_body, new_id
from plugin.config import Settings
from plugin.daemon.app import create_app
from plugin.driver.driver import Driver
from plugin.driver.state import State
from plugin.enforce.backend import BackendUnavailable
from plugin.enforce.ebpf import backend as ebpf_backend
from plugin.enforce.ebpf import pins
from plugin.enforce.ebpf.backend import EbpfBackend
from plugin.enforce.reconciler import Reconciler


class Untouchable:
    """A backend no test here may reach (the create must fail before any write)."""

    name = "nftables"

    def __getattr__(self, attr):
        raise AssertionError(f"backend.{attr} called")


@pytest.fixture
def create(tmp_path):
    """create(generic) -> (status, body, links, firewall, state) of one CreateNetwork."""
    state = State(str(tmp_path / "state"))
    links, fw = FakeLinks(), FakeFirewall()
    backends = {"nftables": Untouchable(), "ebpf": EbpfBackend(pin_root=str(tmp_path / "pins"))}
    client = create_app(Driver(state, links, fw, Reconciler(state, backends))).test_client()

    def post(generic):
        resp = client.post("/NetworkDriver.CreateNetwork",
                           data=json.dumps(create_network_body(new_id(), generic=generic)))
        return resp.status_code, json.loads(resp.get_data(as_text=True)), links, fw, state
    yield post
    state.close()


def test_an_old_kernel_is_a_one_line_error_naming_the_option(create, monkeypatch):
    monkeypatch.setattr(ebpf_backend, "host_problem", lambda: "Linux 5.10.0-28-amd64 is older than 5.18")
    status, body, links, fw, state = create({"secnet.backend": "ebpf"})
    assert status == 400, body
    assert body["Err"] == ("secnet.backend=ebpf is not available on this host: "
                           "Linux 5.10.0-28-amd64 is older than 5.18")
    assert links.links == {} and fw.rules == set() and state.networks() == []


def test_no_host_bpffs_when_the_plugin_may_not_mount_one(tmp_path, monkeypatch):
    """The managed plugin (SECNET_BPFFS_MOUNT=0): a bpffs of its own would die with it."""
    monkeypatch.setattr(ebpf_backend, "host_problem", lambda: None)
    monkeypatch.setattr(pins, "bpffs_mounted", lambda path=pins.BPFFS: False)
    obj = tmp_path / "secnet.o"
    obj.write_bytes(b"")
    backend = EbpfBackend(obj_path=str(obj), mount_bpffs=False)
    with pytest.raises(BackendUnavailable) as err:
        backend.check_host()
    assert str(err.value).startswith("secnet.backend=ebpf is not available on this host: ")
    assert "/sys/fs/bpf is not a bpffs mount" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value,expected", [("", True), ("1", True), ("0", False), ("no", False)])
def test_bpffs_mount_setting(value, expected):
    assert Settings.from_env({"SECNET_BPFFS_MOUNT": value}).bpffs_mount is expected


def test_bad_bpffs_mount_setting_is_named():
    with pytest.raises(ValueError, match="SECNET_BPFFS_MOUNT"):
        Settings.from_env({"SECNET_BPFFS_MOUNT": "maybe"})
