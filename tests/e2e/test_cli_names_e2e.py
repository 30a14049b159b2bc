"""The CLI names NETWORK as the user typed it in its one-line errors (finding U6-F2).

A Docker network of another driver (here: Docker's bridge) is resolved to its id
by the CLI; the error must still name what the user typed, not the 64-character id.
Subnets from 10.231.0.0/16.
"""
from __future__ import annotations

import random

import helpers as h
import vis_helpers as v


def _bridge_network(make_network) -> h.Network:
    for _ in range(20):
        try:
            return make_network("u6-plain", subnet=f"10.231.{random.randint(200, 250)}.0/24",
                                driver="bridge")
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    raise AssertionError("no free subnet in 10.231.200-250.0/24")


def test_a_network_of_another_driver_is_named_as_typed(make_network):
    net = _bridge_network(make_network)
    for args in (("show", net.name), ("policy", net.name), ("mode", net.name), ("log", net.name)):
        res = v.secnet(*args)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(err) == 1, f"secnet {' '.join(args)}: rc {res.returncode}, {err}"
        assert repr(net.name) in err[0] and net.id not in err[0], f"secnet {' '.join(args)}: {err[0]}"
