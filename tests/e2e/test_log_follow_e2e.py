"""`secnet log --follow` goes on across a daemon restart (docs/visibility.md; finding U6-F3).

The follower polls the daemon with a cursor that stays valid across a restart;
while the daemon is away it waits, and it prints the drops logged after the
daemon is back. Subnets from 10.231.0.0/16.
"""
from __future__ import annotations

import random
import subprocess
import tempfile
import time

import pytest

import helpers as h
import vis_helpers as v


def _network(make_network) -> h.Network:
    for _ in range(20):
        try:
            return make_network("sn-u6lf", subnet=f"10.231.{random.randint(100, 199)}.0/24",
                                opts={"secnet.allow": "web->api:tcp/8080"})
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise AssertionError("no free subnet in 10.231.100-199.0/24")


@pytest.mark.exclusive
def test_log_follow_survives_a_daemon_restart(make_network, run_container):
    net = _network(make_network)
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    with tempfile.TemporaryFile(mode="w+") as out:
        follower = subprocess.Popen([v.SECNET, "log", net.name, "--follow"], stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1.0)  # its first answer came from the daemon before the restart
            h.plugin_restart(kill=False)
            h.assert_not_reaches(api, web, 8080, tries=1)

            def printed():
                out.seek(0)
                return api.name in out.read()
            h.wait_until(printed, 5, "the follower to print the drop logged after the restart")
            assert follower.poll() is None, f"the follower ended (rc {follower.returncode})"
        finally:
            follower.terminate()
            follower.wait(5)
