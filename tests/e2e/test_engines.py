"""The engine secnet runs under (here Debian's Docker 20.10): detection shown by
`secnet status`, and the DOCKER-USER rules secnet needs put back within a
second when someone removes them (``iptables -F DOCKER-USER``, ``iptables -D``),
with the network's policy still in force afterwards.

Each test that touches DOCKER-USER saves the chain's rules first and puts back
whatever of them is missing when it ends, also when it fails.
"""
from __future__ import annotations

import json
import shlex
import time

import pytest

import helpers as h
import seg_helpers as s

REPAIR_WITHIN = 1.0  # seconds, the contract for rules outside secnet's tables


def saved_chain() -> dict:
    return {binary: h.docker_user_rules(binary) for binary in ("iptables", "ip6tables")}


def restore_chain(saved: dict) -> None:
    """Append every saved rule that is missing now (in saved order)."""
    for binary, lines in saved.items():
        now = set(h.docker_user_rules(binary))
        for line in lines:
            if line.startswith("-A DOCKER-USER") and line not in now:
                h.run([binary, "-w", "5", *shlex.split(line)], check=False)


@pytest.fixture
def docker_user():
    saved = saved_chain()
    yield saved
    restore_chain(saved)


def expected_rules() -> int:
    """secnet's DOCKER-USER rules of one network: 4 per binary, 2 more in each whose filter
    table has Docker's isolation chain (walked first: plugin/enforce/hostfw/dockerfw.py)."""
    return sum(4 + 2 * ("-N DOCKER-ISOLATION-STAGE-1" in h.run([b, "-w", "5", "-S"]).stdout.splitlines())
               for b in ("iptables", "ip6tables"))


def policy_net(make_network, run_container):
    net = make_network("sn-eng", opts={"secnet.allow": "web->api:tcp/8080"})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    count = expected_rules()
    h.wait_until(lambda: len(h.secnet_rules_for(net.id)) == count, within=5, what="secnet's rules")
    h.assert_reaches(web, api, port=h.LISTEN_PORT)
    h.assert_not_reaches(api, web, port=h.LISTEN_PORT)
    return net, web, api


def time_until_back(net) -> float:
    count, start = expected_rules(), time.monotonic()
    while time.monotonic() - start < 5:
        if len(h.secnet_rules_for(net.id)) == count:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"secnet's DOCKER-USER rules of {net.name} not back within 5 s")


def test_status_reports_the_engine_and_the_forward_filter():
    def engine():
        data = json.loads(s.secnet("status", "--json", check=True).stdout)
        return data.get("engine") if data.get("engine", {}).get("version") else None
    found = h.wait_until(engine, within=10, what="engine detection")
    assert found["version"].startswith("20.10"), found
    assert found["api_version"] == "1.41"
    assert found["firewall_backend"] == ""  # 20.10 does not report it (API < 1.49)
    assert found["forward_filter"] == "iptables"
    text = s.secnet("status", check=True).stdout
    assert "engine: Docker 20.10" in text and "forward filter iptables" in text


@pytest.mark.exclusive
def test_flushed_docker_user_is_restored_within_a_second(make_network, run_container, docker_user):
    net, web, api = policy_net(make_network, run_container)
    h.run(["iptables", "-w", "5", "-F", "DOCKER-USER"])
    took = time_until_back(net)
    print(f"DOCKER-USER flushed: secnet's rules back after {took * 1000:.0f} ms")
    assert took < REPAIR_WITHIN, f"rules back after {took:.2f} s"
    h.assert_reaches(web, api, port=h.LISTEN_PORT)
    h.assert_not_reaches(api, web, port=h.LISTEN_PORT)


@pytest.mark.exclusive
def test_one_deleted_rule_is_restored_within_a_second(make_network, run_container, docker_user):
    net, web, api = policy_net(make_network, run_container)
    accept = next(line for line in h.docker_user_rules("iptables")
                  if h.ALIAS_PREFIX + net.id in line and "-j ACCEPT" in line)
    h.run(["iptables", "-w", "5", "-D", *shlex.split(accept)[1:]])
    took = time_until_back(net)
    print(f"one DOCKER-USER rule deleted: back after {took * 1000:.0f} ms")
    assert took < REPAIR_WITHIN, f"rule back after {took:.2f} s"
    h.assert_reaches(web, api, port=h.LISTEN_PORT)
    h.assert_not_reaches(api, web, port=h.LISTEN_PORT)
