"""The nftables backend refuses a host without bridge netfilter (plugin.enforce.nftables.brhooks)."""
from __future__ import annotations

import pytest

from plugin.enforce.backend import BackendError
from plugin.enforce.nftables import backend as nft_backend
from plugin.enforce.nftables import brhooks


def test_no_bridge_netfilter_is_a_one_line_error_naming_br_netfilter(monkeypatch, tmp_path):
    monkeypatch.setattr(brhooks, "PROC", str(tmp_path / "missing"))
    why = brhooks.available()
    assert why is not None and "br_netfilter" in why and "\n" not in why


def test_check_host_refuses_before_asking_nft(monkeypatch, tmp_path):
    monkeypatch.setattr(brhooks, "PROC", str(tmp_path / "missing"))

    class Runner:
        asked = 0

        def list_json(self, *args):
            Runner.asked += 1
            return {}
    backend = nft_backend.NftBackend(runner=Runner(), netlink=False)
    with pytest.raises(BackendError, match="br_netfilter"):
        backend.check_host()
    assert Runner.asked == 0


def test_bridge_netfilter_present_is_no_error(monkeypatch, tmp_path):
    monkeypatch.setattr(brhooks, "PROC", str(tmp_path))
    assert brhooks.available() is None
