"""secnet as a managed Docker plugin, end to end: built from the Dockerfile
and config.json, pushed to a local registry, installed from it with
`docker plugin install`, then checked with real packets as the driver
`secnet:latest`, across `docker plugin disable/enable`, a dockerd restart,
`docker plugin set` and `docker plugin upgrade`.

The tests of this module run in order on shared fixtures. The legacy daemon
must not run meanwhile (both would clean up the other's kernel objects): the
module fixture stops it after removing its networks and starts it again at
the end; every step it takes is undone in a finalizer, also on failure.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import helpers as h
import managed_helpers as m
from dns_helpers import Outside, check

ALLOW = "web->api:tcp/8080"
BPFFS = "/sys/fs/bpf"
METRICS = {}

# the legacy daemon is down and dockerd restarts: nothing else runs meanwhile (xdist)
pytestmark = pytest.mark.exclusive


@pytest.fixture(autouse=True)
def plugin_up():
    """Overrides the e2e tier's fixture: here the legacy daemon stays down."""
    yield


@pytest.fixture(scope="module")
def managed(request, tmp_path_factory):
    """The legacy daemon stopped; secnet:latest installed from a local registry.

    Returns the first network, created right after `docker plugin enable`.
    """
    def finalize(action, what):
        def run():
            started = time.monotonic()
            try:
                action()
            except Exception as exc:  # keep undoing the rest
                print(f"managed plugin teardown: {what} failed: {exc}")
            print(f"managed plugin teardown: {what}: {time.monotonic() - started:.1f} s")
        request.addfinalizer(run)

    # Finalizers run last-in first-out: legacy start is the very last.
    if not m.ISOLATED:
        finalize(h.plugin_start, "restarting the legacy plugin")
        m.legacy_clear_and_stop()

    def remove_managed():
        if m.plugin_info() and not m.plugin_enabled():  # Docker needs the driver to remove networks
            h.docker("plugin", "enable", m.NAME, check=False)
        errors = m.remove_networks(m.DRIVER) if m.plugin_enabled() else []
        for name in (m.NAME, m.REMOTE):
            m.remove_plugin(name)
        assert not errors, errors
    finalize(remove_managed, "removing the managed plugin and its networks")
    remove_managed()  # leftovers of an earlier run

    registry = m.Registry(tmp_path_factory.mktemp("registry"))
    finalize(registry.stop, "stopping the registry")
    registry.start()

    # make plugin (build, create, enable), then make plugin-push
    h.script("plugin-build.sh", "install", timeout=600)
    assert m.plugin_enabled(), "plugin-build.sh did not leave secnet:latest enabled"
    h.script("plugin-push.sh", m.REGISTRY, timeout=300)
    m.remove_plugin(m.NAME)
    h.docker("plugin", "install", "--grant-all-permissions", "--disable", "--alias", "secnet",
             m.REMOTE, *m.PLUGIN_SETTINGS, timeout=300)
    METRICS["enable_to_create"], METRICS["enable"], net = m.enable_until_network_create(m.NAME, "sn-mp")
    METRICS["rootfs_bytes"] = m.rootfs_bytes()
    # runs first: a test that restarts dockerd may have left it down
    finalize(m.ensure_dockerd, "making sure dockerd runs")
    print(f"\nmanaged plugin: enable took {METRICS['enable']:.2f} s, enable -> network create "
          f"{METRICS['enable_to_create']:.2f} s; rootfs {METRICS['rootfs_bytes'] / 2**20:.0f} MiB")
    return net


@pytest.fixture(scope="module")
def segmented(managed):
    """A segmented network with web, api and db; the containers restart with dockerd."""
    net = m.create_network("sn-mseg", opts={"secnet.allow": ALLOW})
    names = {seg: h.unique(seg) for seg in ("web", "api", "db")}
    yield net, {seg: h.run_container_named(net, name, labels={"secnet.segment": seg},
                                           extra=["--restart", "always", "--stop-timeout", "1"])
                for seg, name in names.items()}
    h.docker("rm", "-f", *names.values(), check=False)  # --restart always: never leave them


def refreshed(net, containers) -> dict:
    """The containers inspected again (addresses and sandboxes change on restart)."""
    return {seg: m.inspect_when_running(c.name, net) for seg, c in containers.items()}


def assert_isolation(containers, within: float = 8.0, also_denied=()) -> None:
    """web reaches api:8080; db reaches no api, api no web (tcp and ping), nor any
    (src, dst, port) of ``also_denied``.

    The denials are probed in parallel (each probe waits out its timeout)."""
    web, api, db = containers["web"], containers["api"], containers["db"]
    h.assert_reaches(web, api, port=h.LISTEN_PORT, within=within)
    denied = [(db, api, h.LISTEN_PORT), (db, api, None), (api, web, h.LISTEN_PORT), (api, web, None),
              *also_denied]
    with ThreadPoolExecutor(max_workers=len(denied)) as pool:
        for future in [pool.submit(h.assert_not_reaches, src, dst, port) for src, dst, port in denied]:
            future.result()


def assert_verified(net) -> None:
    """`secnet verify` probed every segment from inside its members' namespaces, all as expected."""
    res = m.secnet_cli("verify", net.name, "--json")
    assert res.returncode == 0, f"secnet verify exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    data = json.loads(res.stdout)
    assert data["ok"] and data["probes"] > 0, data
    assert not {"web", "api", "db"} & set(data["idle"]), data


def test_installed_from_the_local_registry(managed):
    info = m.plugin_info()
    assert info and info["Enabled"], info
    assert info["Name"] == m.NAME and info["PluginReference"] == m.REMOTE, info
    config = info["Config"]
    assert config["Interface"]["Types"] == ["docker.networkdriver/1.0"]
    assert config["Network"]["Type"] == "host"
    assert config["Linux"]["Capabilities"] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    bpffs = [mnt for mnt in config["Mounts"] if mnt["Destination"] == BPFFS]
    assert [(mnt["Source"], mnt["Options"]) for mnt in bpffs] == [(BPFFS, ["rbind", "rslave"])], bpffs
    sock = m.plugin_socket()
    assert m.answers(sock), f"the plugin does not answer on {sock}"
    if not m.ISOLATED:
        assert not h.plugin_answers(0.5), "the legacy plugin answers although the managed one runs"


def test_enable_to_first_network_create_and_rootfs_size(managed, record_property):
    record_property("enable_to_network_create_s", round(METRICS["enable_to_create"], 2))
    record_property("rootfs_mib", round(METRICS["rootfs_bytes"] / 2**20))
    assert METRICS["enable_to_create"] < 15, METRICS
    assert METRICS["rootfs_bytes"] < 250 * 2**20, METRICS
    assert managed.id in h.state_network_ids(), "the state is not in the host's /var/lib/secnet"


def test_two_containers_ping_and_reach_a_tcp_port(managed):
    a = h.run_container(managed, "mpa")
    b = h.run_container(managed, "mpb")
    try:
        assert h.in_subnet(a.ip, managed.subnet) and h.in_subnet(b.ip, managed.subnet)
        # a sysctl of the bridge, written through the plugin's /proc/sys
        with open(f"/proc/sys/net/ipv4/conf/{managed.bridge}/route_localnet") as f:
            assert f.read().strip() == "1"
        h.assert_reaches(a, b)
        h.assert_reaches(b, a)
        h.assert_reaches(a, b, port=h.LISTEN_PORT)
        h.assert_reaches(b, a, port=h.LISTEN_PORT)
        h.assert_not_reaches(a, b, port=h.LISTEN_PORT + 1)
    finally:
        h.docker("rm", "-f", a.name, b.name, check=False)


def test_segments_are_enforced(segmented):
    net, containers = segmented
    assert_isolation(containers)
    h.assert_reaches(containers["web"], containers["web"], port=h.LISTEN_PORT)


def test_cli_talks_to_the_managed_plugin(segmented):
    net, containers = segmented
    res = m.secnet_cli("show", net.name, "--json")
    assert res.returncode == 0, res.stderr
    segments = json.loads(res.stdout)["segments"]
    shown = {s["name"]: {x["container"] for x in s["members"]} for s in segments}
    for seg, c in containers.items():
        assert c.name in shown.get(seg, set()), shown


def test_verify_probes_from_the_containers_namespaces(segmented):
    """The plugin enters the sandboxes (SandboxKey) of containers started after it."""
    net, _containers = segmented
    assert_verified(net)


def ebpf_pins(net) -> str:
    """The host's directory of an eBPF network's pinned maps and programs."""
    return os.path.join(BPFFS, "secnet", net.id[:12])


def test_ebpf_network_through_the_managed_plugin(managed):
    """`-o secnet.backend=ebpf`: the object compiled in the image loads inside the
    plugin, pins land in the host's bpffs, and they outlive the plugin: isolation
    holds while it is disabled, and after the enable it adopts them (a late joiner
    is judged by the same maps)."""
    net = m.create_network("sn-mebpf", opts={"secnet.allow": ALLOW, "secnet.backend": "ebpf"})
    names = {seg: h.unique(f"e{seg}") for seg in ("web", "api", "db")}
    late = h.unique("eweb2")
    try:
        containers = {seg: h.run_container_named(net, name, labels={"secnet.segment": seg})
                      for seg, name in names.items()}
        pins = ebpf_pins(net)
        assert os.path.isdir(pins) and {"policy", "from_container"} <= set(os.listdir(pins)), \
            f"no pins of the eBPF network in the host's {pins}"
        assert_isolation(containers)
        h.docker("plugin", "disable", "-f", m.NAME)
        try:
            assert_isolation(containers)  # the pinned programs keep enforcing
        finally:
            h.docker("plugin", "enable", m.NAME)
        web2 = h.run_container_named(net, late, labels={"secnet.segment": "web"})
        h.assert_reaches(web2, containers["api"], port=h.LISTEN_PORT)
        assert_isolation(containers, also_denied=[(containers["db"], web2, h.LISTEN_PORT)])
    finally:
        h.docker("rm", "-f", late, *names.values(), check=False)
        h.docker("network", "rm", net.id, check=False)
    assert not os.path.exists(ebpf_pins(net)), "the eBPF network's pins outlived it"


def test_dns_rule_through_the_managed_plugin(managed):
    """A dns(NAME) rule works in the plugin's rootfs (the NFQUEUE reader, dnspython, the
    host's iptables from inside it): an answer through Docker's embedded resolver
    teaches web its address at once, another name and another segment learn nothing,
    and `secnet show` lists the address under the rule."""
    outside = Outside().create()
    names = {seg: h.unique(f"d{seg}") for seg in ("web", "api")}
    net = None
    try:
        outside.server.add("api.mp.test", "A", 300, f"{outside.net}.5")
        outside.server.add("other.mp.test", "A", 300, f"{outside.net}.6")
        net = m.create_network("sn-mdns", opts={"secnet.egress": "deny", "secnet.allow": (
            f"web->dns(api.mp.test):tcp/443 *->{outside.dns}:udp/53 *->{outside.dns}:tcp/53")})
        web, api = (h.run_container_named(net, name, labels={"secnet.segment": seg},
                                          extra=["--dns", outside.dns]) for seg, name in names.items())
        got = check(web, ["api.mp.test", "other.mp.test"])
        assert {n: o for n, (_a, o) in got.items()} == {"api.mp.test": "ok", "other.mp.test": "timeout"}
        assert check(api, ["api.mp.test"])["api.mp.test"][1] == "timeout"
        res = m.secnet_cli("show", net.name, "--json")
        assert res.returncode == 0, res.stderr
        assert [(r["rule"], [(a["segment"], a["address"]) for a in r["addresses"]])
                for r in json.loads(res.stdout)["dns"]] == [
            ("web->dns(api.mp.test):tcp/443", [("web", f"{outside.net}.5")])]
    finally:
        h.docker("rm", "-f", *names.values(), check=False)
        if net is not None:
            h.docker("network", "rm", net.id, check=False)
        outside.destroy()


def test_isolation_survives_plugin_disable_and_enable(segmented):
    net, containers = segmented
    h.docker("plugin", "disable", "-f", m.NAME)
    try:
        assert_isolation(containers)  # the kernel keeps enforcing meanwhile
    finally:
        h.docker("plugin", "enable", m.NAME)
    assert_isolation(containers)
    late = h.run_container_named(net, h.unique("web2"), labels={"secnet.segment": "web"})
    try:
        h.assert_reaches(late, containers["api"], port=h.LISTEN_PORT)
        h.assert_not_reaches(containers["api"], late, port=h.LISTEN_PORT)
    finally:
        h.docker("rm", "-f", late.name, check=False)


def test_isolation_survives_a_dockerd_restart(segmented):
    net, containers = segmented
    m.restart_dockerd()
    h.wait_until(m.plugin_enabled, 60, "the plugin to be enabled again")
    containers.update(refreshed(net, containers))
    assert_isolation(containers, within=40)
    assert_verified(net)
    other = m.create_network("sn-mafter")
    a = h.run_container(other, "after")
    try:
        h.assert_reaches(a, a)
    finally:
        h.docker("rm", "-f", a.name, check=False)
        h.docker("network", "rm", other.name, check=False)


def test_log_level_is_settable(segmented):
    net, containers = segmented
    log = m.dockerd_log()
    assert log, "cannot find dockerd's log file (it holds the managed plugin's output)"
    plugin_id = m.plugin_info()["Id"]
    assert m.plugin_env()["SECNET_LOG_LEVEL"] == "info"

    def debug_lines_on_join() -> list:
        offset = log.stat().st_size
        c = h.run_container_named(net, h.unique("lvl"), labels={"secnet.segment": "db"})
        h.docker("rm", "-f", c.name)
        time.sleep(0.5)
        lines = m.plugin_log_lines(m.log_since(log, offset), plugin_id)
        return [line for line in lines if " DEBUG " in line or "NetworkDriver.Join" in line]

    assert debug_lines_on_join() == [], "debug output at SECNET_LOG_LEVEL=info"
    m.set_env(m.NAME, SECNET_LOG_LEVEL="debug")
    try:
        assert m.plugin_env()["SECNET_LOG_LEVEL"] == "debug"
        lines = debug_lines_on_join()
        assert lines, f"no debug output in {log} after SECNET_LOG_LEVEL=debug"
    finally:
        m.set_env(m.NAME, SECNET_LOG_LEVEL="info")
    assert_isolation(refreshed(net, containers))


def test_upgrade_keeps_networks_and_isolation(segmented):
    net, containers = segmented
    before = m.plugin_info()["Id"]
    h.docker("plugin", "disable", "-f", m.NAME)
    try:
        h.docker("plugin", "upgrade", "--grant-all-permissions", m.NAME, m.REMOTE, timeout=300)
        if m.PLUGIN_SETTINGS:  # an upgrade brings back the config's mount sources
            h.docker("plugin", "set", m.NAME, *m.PLUGIN_SETTINGS)
    finally:
        h.docker("plugin", "enable", m.NAME)
    assert m.plugin_info()["Id"] == before
    assert_isolation(refreshed(net, containers))
    assert net.id in h.state_network_ids()
