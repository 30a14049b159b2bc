"""Daemon settings from the environment: a bad value stops the start, one line naming it."""
from __future__ import annotations

import pytest

from plugin.config import Settings


@pytest.mark.parametrize("value", ["9100", "localhost", "host:", "host:port", "[::1]:0", "1.2.3.4:70000", "127.0.0.1:\u00b2"])
def test_a_malformed_metrics_address_stops_the_start(value):
    with pytest.raises(ValueError, match=r"SECNET_METRICS_ADDR .*host:port") as err:
        Settings.from_env({"SECNET_METRICS_ADDR": value, "SECNET_DNS": "0"})
    assert "\n" not in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize("value, kept", [("127.0.0.1:9100", "127.0.0.1:9100"), (" [::1]:9100 ", "[::1]:9100"),
                                         ("", "")])
def test_a_good_metrics_address_is_kept(value, kept):
    assert Settings.from_env({"SECNET_METRICS_ADDR": value, "SECNET_DNS": "0"}).metrics_addr == kept
