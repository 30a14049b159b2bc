"""Helpers of the managed-plugin tests: the legacy daemon out of the way, a
local registry, the managed plugin's life cycle and dockerd restarts.

The legacy daemon (scripts/plugin.sh) and the managed plugin must never run
at the same time: both share /var/lib/secnet and each removes the kernel
objects its state does not own. Subnets come from 10.226.0.0/16 ..
10.229.0.0/16; probes only target containers the tests made.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

import helpers as h

ROOT = h.ROOT
# Another engine (for running beside other users of the host's engine): an
# engine in its own network namespace, and this test run inside it too.
ISOLATED = os.environ.get("SECNET_E2E_ISOLATED_ENGINE") == "1"  # leave the legacy daemon alone
DOCKER_PID = os.environ.get("DOCKERD_PIDFILE", "/var/run/docker.pid")
DOCKERD_START = os.environ.get("DOCKERD_START", "")  # shell command; default scripts/engine.sh
PLUGIN_SETTINGS = os.environ.get("SECNET_PLUGIN_SETTINGS", "").split()  # KEY=VALUE ...
REGISTRY = "127.0.0.1:5000"
NAME = "secnet:latest"                 # the installed plugin (--alias secnet) ...
DRIVER = NAME                          # ... and the network driver it provides
REMOTE = f"{REGISTRY}/secnet:latest"   # where plugin-push.sh puts it
LEGACY_DRIVER = "secnet"
ROOTFS = ROOT / "build" / "plugin" / "rootfs"


def pick_subnet() -> str:
    return f"10.{random.randint(226, 229)}.{random.randint(0, 255)}.0/24"


def create_network(prefix: str, opts=None, driver: str = DRIVER) -> h.Network:
    """``docker network create -d DRIVER`` on a free random /24 of 10.226-229."""
    name = h.unique(prefix)
    for _ in range(10):
        subnet = pick_subnet()
        res = h.docker(*h.network_create_args(name, subnet, opts=opts, driver=driver), check=False)
        if res.returncode == 0:
            return h.Network(name=name, id=res.stdout.strip(), subnet=subnet, driver=driver)
        if "overlap" not in res.stderr:
            raise h.CommandFailed(f"docker network create -d {driver} {name}: {res.stderr.strip()}")
    raise h.CommandFailed(f"no free subnet for {name}")


def inspect_when_running(name: str, net: h.Network, within: float = 60) -> h.Container:
    """The container once it runs again (after a restart of dockerd or the plugin)."""
    def running():
        res = h.docker("inspect", "-f", "{{.State.Running}}", name, check=False)
        return res.stdout.strip() == "true"
    h.wait_until(running, within, f"container {name} to run")
    return h.inspect_container(name, net)


# --- Docker networks and plugins --------------------------------------------
def networks_of(driver: str) -> list:
    """Ids of the networks whose driver is exactly ``driver``."""
    ids = h.docker("network", "ls", "-q", "--no-trunc", "--filter", f"driver={driver}").stdout.split()
    out = []
    for nid in ids:
        res = h.docker("network", "inspect", "-f", "{{.Driver}}", nid, check=False)
        if res.returncode == 0 and res.stdout.strip() == driver:
            out.append(nid)
    return out


def remove_networks(driver: str) -> list:
    """Remove every network of ``driver`` and the containers on it; returns the errors."""
    errors = []
    for nid in networks_of(driver):
        for attempt in range(5):  # a container may still be joining
            names = h.attached_containers(nid)
            if names:
                h.docker("rm", "-f", *names, check=False)
            res = h.docker("network", "rm", nid, check=False)
            if res.returncode == 0 or "No such network" in res.stderr:
                break
            time.sleep(0.5)
        else:
            errors.append(f"docker network rm {nid[:12]}: {res.stderr.strip()}")
    return errors


def plugin_info(name: str = NAME) -> Optional[dict]:
    res = h.docker("plugin", "inspect", name, check=False)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout)[0]


def plugin_enabled(name: str = NAME) -> bool:
    info = plugin_info(name)
    return bool(info and info.get("Enabled"))


def remove_plugin(name: str = NAME) -> None:
    if plugin_info(name) is None:
        return
    h.docker("plugin", "disable", "-f", name, check=False)
    h.docker("plugin", "rm", "-f", name)


def plugin_socket(name: str = NAME) -> str:
    """The host path of the plugin's socket: /run/docker/plugins/<id>/secnet.sock."""
    info = plugin_info(name)
    assert info, f"plugin {name} is not installed"
    return f"/run/docker/plugins/{info['Id']}/{info['Config']['Interface']['Socket']}"


def answers(sock_path: str, timeout: float = 2.0) -> bool:
    """True when the socket answers Plugin.Activate as a network driver."""
    return h.plugin_answers(timeout, sock_path)


def secnet_cli(*args, name: str = NAME) -> subprocess.CompletedProcess:
    """The host's `secnet` CLI talking to the managed plugin's socket."""
    env = dict(os.environ, SECNET_SOCKET=plugin_socket(name))
    return subprocess.run([str(ROOT / ".venv" / "bin" / "secnet"), *args], capture_output=True,
                          text=True, timeout=60, env=env)


def set_env(name: str, **env) -> None:
    """``docker plugin set`` (the plugin must be disabled: done here) and enable again."""
    h.docker("plugin", "disable", "-f", name)
    try:
        h.docker("plugin", "set", name, *(f"{k}={v}" for k, v in env.items()))
    finally:
        h.docker("plugin", "enable", name)


def plugin_env(name: str = NAME) -> dict:
    info = plugin_info(name) or {}
    return dict(e.split("=", 1) for e in info.get("Settings", {}).get("Env", []))


def enable_until_network_create(name: str, prefix: str, opts=None):
    """``docker plugin enable``, then retry ``network create`` until it works.

    Returns (seconds from the enable until the create succeeded, seconds the
    enable took, the network).
    """
    started = time.monotonic()
    h.docker("plugin", "enable", name, timeout=120)
    enabled = time.monotonic() - started
    deadline = started + 60
    while True:
        try:
            net = create_network(prefix, opts=opts)
            return time.monotonic() - started, enabled, net
        except h.CommandFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- the legacy daemon --------------------------------------------------------
def legacy_running() -> bool:
    return h.script("plugin.sh", "status", check=False).returncode == 0 or h.plugin_answers(0.5)


def legacy_clear_and_stop() -> None:
    """Remove the legacy plugin's networks (while it still answers), then stop it."""
    if not h.plugin_answers(0.5) and networks_of(LEGACY_DRIVER):
        h.plugin_start()  # Docker needs the driver to remove its networks
    errors = remove_networks(LEGACY_DRIVER)
    assert not errors, "cannot remove the legacy plugin's networks:\n" + "\n".join(errors)
    h.script("plugin.sh", "stop")
    assert not h.plugin_answers(0.5), "the legacy plugin still answers after plugin.sh stop"


# --- a local registry (Debian's docker-registry) -------------------------------
REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {addr}
"""


class Registry:
    """docker-registry serving on 127.0.0.1:5000 from a throwaway folder."""

    def __init__(self, workdir: Path, addr: str = REGISTRY):
        self.workdir, self.addr = Path(workdir), addr
        self.proc: Optional[subprocess.Popen] = None
        self.log = self.workdir / "registry.log"

    @staticmethod
    def ensure_installed() -> str:
        binary = shutil.which("docker-registry")
        if binary is None:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "docker-registry"]
            if subprocess.run(install, capture_output=True, env=env).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
                h.run(install, timeout=300)
            binary = shutil.which("docker-registry")
        assert binary, "docker-registry is not installed"
        return binary

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def start(self) -> None:
        binary = self.ensure_installed()
        assert not self.up(), f"something already serves a registry on {self.addr}"
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(REGISTRY_CONFIG.format(root=self.workdir / "data", addr=self.addr))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        h.wait_until(lambda: self.up() or self.proc.poll() is not None, 20, "the registry to answer")
        assert self.proc.poll() is None, f"docker-registry exited: {self.log.read_text()[-2000:]}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


# --- dockerd --------------------------------------------------------------------
def dockerd_pid() -> Optional[int]:
    try:
        pid = int(Path(DOCKER_PID).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def dockerd_log() -> Optional[Path]:
    """The file dockerd (and so every managed plugin) writes its log to."""
    pid = dockerd_pid()
    if pid is None:
        return None
    try:
        target = os.readlink(f"/proc/{pid}/fd/2")
    except OSError:
        return None
    return Path(target) if target.startswith("/") and os.path.isfile(target) else None


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def plugin_log_lines(text: str, plugin_id: str) -> list:
    """The lines of a dockerd log that carry output of the plugin ``plugin_id``."""
    return [line for line in text.splitlines() if f"plugin={plugin_id}" in line]


_SPAWNED: dict = {}  # pid -> Popen of a dockerd started here (so that it is reaped here)


def _dockerd_states() -> list:
    """Process states (R, S, Z, ...) of every process named dockerd."""
    states = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        if comm == "dockerd":
            states.append(stat[stat.rindex(")") + 2])
    return states


def start_dockerd() -> None:
    """scripts/engine.sh, or the same start by hand when a dockerd zombie would fool it.

    A dockerd that engine.sh started is adopted by whatever reaps orphans
    here, which may reap it only much later; engine.sh's `pgrep -x dockerd`
    takes that zombie for a running engine and waits for nothing.
    """
    if DOCKERD_START:
        h.run(["sh", "-c", DOCKERD_START], timeout=30)
    elif "Z" in _dockerd_states() and not set(_dockerd_states()) - {"Z"}:
        (ROOT / ".run").mkdir(exist_ok=True)
        with open(ROOT / ".run" / "dockerd.log", "ab") as log:
            proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        _SPAWNED[proc.pid] = proc
    else:
        h.script("engine.sh")
        return
    h.wait_until(lambda: h.docker("info", check=False, timeout=10).returncode == 0, 60, "dockerd")


def ensure_dockerd() -> None:
    if h.docker("info", check=False, timeout=20).returncode != 0:
        start_dockerd()


def restart_dockerd(timeout: float = 90) -> None:
    """SIGTERM to dockerd, wait until it is gone, start it with scripts/engine.sh."""
    pid = dockerd_pid()
    assert pid, "no dockerd runs"
    os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while dockerd_pid() == pid or _alive(pid):
        assert time.monotonic() < deadline, f"dockerd {pid} did not stop within {timeout} s"
        if pid in _SPAWNED:
            _SPAWNED[pid].poll()  # reap our own child
        time.sleep(0.2)
    _SPAWNED.pop(pid, None)
    start_dockerd()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def rootfs_bytes() -> int:
    out = h.run(["du", "-sbx", str(ROOTFS)]).stdout
    return int(out.split()[0])
