"""Helpers of the end-to-end tier: the ``docker`` CLI, probes run inside a
container's network namespace, and read-only looks at the kernel and at
secnet's state.

Everything goes through subprocess, as a user would type it. Names carry a
uuid suffix and subnets are picked at random inside 10.220.0.0/16 ..
10.229.0.0/16 (fd00:220::/56 .. fd00:229::/56 for IPv6), so that parallel or
half-failed runs never collide. Probes only ever target addresses of
containers the test itself created.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import workers

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SECNET_TEST_IMAGE", "secnet-busybox:latest")
SOCKET = os.environ.get("SECNET_SOCKET", "/run/docker/plugins/secnet.sock")
STATE_DB = os.path.join(os.environ.get("SECNET_STATE_DIR", "/var/lib/secnet"), "state.db")
ALIAS_PREFIX = "secnet:"       # every link secnet makes carries ifalias secnet:<owner-id>
LISTEN_PORT = 8080             # the default container command serves this port
REPLY = "secnet-ok"            # ... and answers every connection with this line
BUSYBOX = shutil.which("busybox") or "/bin/busybox"  # the host's: ping and nc for probes


class CommandFailed(AssertionError):
    pass


def run(cmd, check=True, timeout=120, input=None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``cmd``; with ``check``, a non-zero exit fails with its output."""
    try:
        res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                             timeout=timeout, input=input, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{' '.join(map(str, cmd))}: no answer within {timeout} s") from exc
    if check and res.returncode != 0:
        raise CommandFailed(f"{' '.join(map(str, cmd))} exited {res.returncode}\n"
                            f"stdout: {res.stdout.strip()}\nstderr: {res.stderr.strip()}")
    return res


def docker(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    return run(["docker", *args], check=check, timeout=timeout)


def script(name: str, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
    if name == "plugin.sh" and args and args[0] in ("start", "stop", "kill"):
        workers.require_exclusive(f"plugin.sh {args[0]}")  # start stops a running one first
    return run(["bash", str(ROOT / "scripts" / name), *args], check=check, timeout=timeout, cwd=ROOT)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pick_subnet4() -> str:
    return f"10.{random.randint(220, 229)}.{random.randint(0, 255)}.0/24"


def pick_subnet6() -> str:
    return f"fd00:{random.randint(220, 229)}:0:{random.randint(0, 255):x}::/64"


# --- the plugin ------------------------------------------------------------
def plugin_answers(timeout: float = 2.0, sock_path: str = "") -> bool:
    """True when the daemon answers Plugin.Activate (as a network driver) on its socket."""
    request = b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sock_path or SOCKET)
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return False
    return b"NetworkDriver" in data


def plugin_kill() -> None:
    """kill -9 of the daemon (scripts/plugin.sh kill)."""
    script("plugin.sh", "kill")
    assert not plugin_answers(0.5), "the plugin still answers after plugin.sh kill"


def plugin_start() -> None:
    script("plugin.sh", "start")
    assert plugin_answers(), "the plugin does not answer after plugin.sh start"


def ensure_plugin() -> None:
    """Start the plugin when it does not answer (a test before may have killed it); under
    xdist one worker at a time, and never while an exclusive test has it down on purpose
    (that test holds the run-wide lock)."""
    if plugin_answers():
        return
    with workers.mutex("plugin-start"):
        if not plugin_answers():
            run(["bash", str(ROOT / "scripts" / "plugin.sh"), "start"], cwd=ROOT)
            assert plugin_answers(), "the plugin does not answer after plugin.sh start"


def plugin_restart(kill: bool = True) -> None:
    """Stop the daemon (kill -9 with ``kill``, else SIGTERM) and start it again."""
    if kill:
        plugin_kill()
    else:
        script("plugin.sh", "stop")
    plugin_start()


# --- networks and containers ----------------------------------------------
@dataclass
class Network:
    name: str
    id: str
    subnet: str
    subnet6: Optional[str] = None
    driver: str = "secnet"
    bridge_opt: Optional[str] = None

    @property
    def bridge(self) -> str:
        """The bridge secnet made for this network (found by its alias)."""
        owned = links_owned_by(self.id)
        assert owned, f"no link carries alias {ALIAS_PREFIX}{self.id}"
        return owned[0]["ifname"]


@dataclass
class Container:
    name: str
    id: str
    network: Network
    ip: Optional[str]
    ip6: Optional[str]
    endpoint_id: str
    sandbox: str

    def veth(self) -> Optional[dict]:
        """The host side of this container's veth (the link aliased with its endpoint id)."""
        owned = links_owned_by(self.endpoint_id)
        return owned[0] if owned else None


#: the `secnet.backend` of networks a test creates without naming one (the `backend`
#: fixture of tests/e2e/conftest.py sets it for the behaviour tests)
DEFAULT_BACKEND = None


def network_create_args(name, subnet, subnet6=None, opts=None, driver="secnet", internal=False) -> list:
    opts = dict(opts or {})
    if driver.startswith("secnet") and DEFAULT_BACKEND and "secnet.backend" not in opts:
        opts["secnet.backend"] = DEFAULT_BACKEND
    args = ["network", "create", "-d", driver, "--subnet", subnet]
    if subnet6:
        args += ["--ipv6", "--subnet", subnet6]
    if internal:
        args.append("--internal")
    for key, value in (opts or {}).items():
        args += ["-o", f"{key}={value}"]
    return args + [name]


def create_network(name: str, ipv6=False, subnet=None, subnet6=None, opts=None,
                   driver="secnet", internal=False) -> Network:
    """``docker network create``; picks free random subnets unless given."""
    for _ in range(10):
        s4 = subnet or pick_subnet4()
        s6 = (subnet6 or pick_subnet6()) if ipv6 else None
        res = docker(*network_create_args(name, s4, s6, opts, driver, internal), check=False)
        if res.returncode == 0:
            return Network(name=name, id=res.stdout.strip(), subnet=s4, subnet6=s6, driver=driver,
                           bridge_opt=(opts or {}).get("secnet.bridge"))
        if "overlap" not in res.stderr or (subnet and (subnet6 or not ipv6)):
            raise CommandFailed(f"docker network create {name} failed: {res.stderr.strip()}")
    raise CommandFailed(f"no free subnet found for {name}")


def attached_containers(network: str) -> list:
    res = docker("network", "inspect", "-f", "{{json .Containers}}", network, check=False)
    if res.returncode != 0:
        return []
    return [c["Name"] for c in (json.loads(res.stdout) or {}).values()]


def remove_network(net: Network) -> None:
    """Remove the network and whatever containers are still attached to it."""
    if docker("network", "inspect", net.id, check=False).returncode != 0:
        return
    names = attached_containers(net.id)
    if names:
        docker("rm", "-f", *names, check=False)
    docker("network", "rm", net.id)


def run_container(net: Network, name=None, **kw) -> Container:
    """``docker run -d`` on ``net`` with a unique name; see run_container_named."""
    return run_container_named(net, unique(name or "c"), **kw)


def run_container_named(net: Network, name: str, labels=None, cmd=None, cap_add=(),
                        extra=()) -> Container:
    """``docker run -d --name NAME``; by default the container serves LISTEN_PORT."""
    args = ["run", "-d", "--name", name, "--network", net.name]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    for cap in cap_add:
        args += ["--cap-add", cap]
    args += list(extra)
    args.append(IMAGE)
    args += list(cmd) if cmd else listen_cmd(LISTEN_PORT)
    cid = docker(*args).stdout.strip()
    return inspect_container(name, net, cid)


def listen_cmd(port: int) -> list:
    """A persistent TCP server that answers REPLY (busybox nc)."""
    return ["nc", "-ll", "-p", str(port), "-e", "echo", REPLY]


def inspect_container(name: str, net: Network, cid: str = "") -> Container:
    info = json.loads(docker("inspect", name).stdout)[0]
    assert info["State"]["Running"], f"container {name} is not running: {info['State']}"
    ns = info["NetworkSettings"]
    ep = ns["Networks"][net.name]
    return Container(name=name, id=cid or info["Id"], network=net, ip=ep["IPAddress"] or None,
                     ip6=ep["GlobalIPv6Address"] or None, endpoint_id=ep["EndpointID"],
                     sandbox=ns["SandboxKey"])


# --- probes from inside a container's network namespace -------------------
def in_netns(container: Container, *cmd, input=None, timeout=15) -> subprocess.CompletedProcess:
    """Run a host program inside the container's network namespace."""
    return run(["nsenter", f"--net={container.sandbox}", *cmd], check=False, input=input,
               timeout=timeout)


def _address(dst, family: int) -> str:
    if isinstance(dst, Container):
        addr = dst.ip if family == 4 else dst.ip6
        assert addr, f"{dst.name} has no IPv{family} address"
        return addr
    return str(dst)


def ping(src: Container, dst, family: int = 4) -> bool:
    """One echo request, one second to answer."""
    return in_netns(src, BUSYBOX, "ping", "-c1", "-W1", _address(dst, family)).returncode == 0


def tcp(src: Container, dst, port: int = LISTEN_PORT, family: int = 4) -> bool:
    """A TCP connection that gets the listener's REPLY (nc -w2)."""
    res = in_netns(src, BUSYBOX, "nc", "-w2", _address(dst, family), str(port), input="\n")
    return REPLY in res.stdout


def _probe(src, dst, port, family) -> bool:
    return ping(src, dst, family) if port is None else tcp(src, dst, port, family)


def _what(src, dst, port, family) -> str:
    target = dst.name if isinstance(dst, Container) else dst
    how = "ping" if port is None else f"tcp/{port}"
    return f"{src.name} -> {target} ({_address(dst, family)}) {how}"


def assert_reaches(src: Container, dst, port: Optional[int] = None, family: int = 4,
                   within: float = 8.0) -> None:
    """``src`` reaches ``dst`` (ping, or a TCP port) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if _probe(src, dst, port, family):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"expected to reach, but did not: {_what(src, dst, port, family)}")
        time.sleep(0.3)


def assert_not_reaches(src: Container, dst, port: Optional[int] = None, family: int = 4,
                       tries: int = 2) -> None:
    """No probe of ``tries`` gets through (each bounded: ping -W1, nc -w2)."""
    for _ in range(tries):
        if _probe(src, dst, port, family):
            raise AssertionError(f"expected not to reach, but did: {_what(src, dst, port, family)}")


# --- kernel, firewall and state, read-only ---------------------------------
def links() -> list:
    return json.loads(run(["ip", "-j", "-d", "link", "show"]).stdout)


def link(name: str) -> Optional[dict]:
    res = run(["ip", "-j", "-d", "link", "show", "dev", name], check=False)
    return json.loads(res.stdout)[0] if res.returncode == 0 and res.stdout.strip() else None


def links_owned_by(owner_id: str) -> list:
    return [l for l in links() if l.get("ifalias") == ALIAS_PREFIX + owner_id]


def kind(link_info: dict) -> Optional[str]:
    return (link_info.get("linkinfo") or {}).get("info_kind")


def wait_until(predicate, within: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.2)


def docker_user_rules(binary: str = "iptables") -> list:
    res = run([binary, "-w", "5", "-S", "DOCKER-USER"], check=False)
    return res.stdout.splitlines() if res.returncode == 0 else []


def secnet_rules_for(network_id: str) -> list:
    """Lines of iptables/ip6tables DOCKER-USER that carry this network's secnet tag."""
    return [line for binary in ("iptables", "ip6tables") for line in docker_user_rules(binary)
            if ALIAS_PREFIX + network_id in line]


def _state_query(sql: str, args=()) -> list:
    if not os.path.exists(STATE_DB):
        return []
    db = sqlite3.connect(f"file:{STATE_DB}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def state_rule_edits(network_id: str) -> list:
    """The network's rows of the state's ``rule_edits`` journal (JSON texts)."""
    return [doc for doc, in _state_query("SELECT doc FROM rule_edits WHERE network_id=?", (network_id,))]


def state_network_doc(network_id: str) -> Optional[str]:
    """The network's saved document (JSON text), None when it has none."""
    rows = _state_query("SELECT doc FROM networks WHERE id=?", (network_id,))
    return rows[0][0] if rows else None


def state_network_ids() -> set:
    return {row[0] for row in _state_query("SELECT id FROM networks")}


def state_endpoint_rows(network_id: Optional[str] = None, endpoint_id: Optional[str] = None) -> list:
    if endpoint_id is not None:
        return _state_query("SELECT id, network_id FROM endpoints WHERE id=?", (endpoint_id,))
    return _state_query("SELECT id, network_id FROM endpoints WHERE network_id=?", (network_id,))


def docker_network_ids() -> set:
    return set(docker("network", "ls", "-q", "--no-trunc").stdout.split())


def secnet_owners() -> set:
    """Owner ids of every link that carries a secnet alias."""
    return {l["ifalias"][len(ALIAS_PREFIX):] for l in links()
            if (l.get("ifalias") or "").startswith(ALIAS_PREFIX) and kind(l) == "bridge"}


def in_subnet(addr: str, subnet: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(subnet)
