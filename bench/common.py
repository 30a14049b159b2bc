"""Helpers shared by the benchmark sections: statistics, processes, Docker,
the plugin socket, network namespaces and probes.

Everything the benchmark creates is named with the prefix ``snbench`` (Docker
containers and networks, namespaces, iptables comments, the scratch nft
table), so that a run can remove the leftovers of an interrupted one and
nothing else.
"""
from __future__ import annotations

import http.client
import json
import shlex
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

PREFIX = "snbench"
IMAGE = os.environ.get("IMAGE", "secnet-busybox:latest")
PLUGIN_SOCKET = os.environ.get("SECNET_SOCKET", "/run/docker/plugins/secnet.sock")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECNET_CLI = os.path.join(REPO, ".venv", "bin", "secnet")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

now = time.perf_counter


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client``'s connection on a unix socket at ``path`` (kept open across
    requests, as libnetwork keeps its connection to the plugin)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


# --- sizes --------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """How much each section does; ``quick`` is for development only."""

    quick: bool
    cp_runs: int            # network create/rm pairs and run-until-ping runs, per driver
    enforce_runs: int       # time-to-enforce runs
    iperf_secs: int
    dp_repeats: int         # iperf3 + ping repeats per data-plane configuration
    sweep_repeats: int      # iperf3 + ping repeats per point of the rule sweeps
    endpoints: int          # fake endpoints through the plugin API
    join_marks: tuple       # which joins to report (1-based)
    rss_marks: tuple        # endpoint counts at which RSS is read
    rule_counts: tuple      # N for policy set, iptables and nft
    update_repeats: int     # rule updates timed per N
    idle_secs: int          # idle CPU window
    mode_switches: int = 20  # `secnet mode` switches timed (half each way)
    scale_rules: int = 10000  # rules in force for the joins and the scale data plane
    ab_rounds: int = 8      # interleaved iperf3 rounds: secnet / secnet-policy / secnet-scale
    dp_rounds: int = 10     # interleaved rounds of the datapath section (bench.ebpf_datapath)

    @classmethod
    def full(cls) -> "Sizes":
        return cls(quick=False, cp_runs=30, enforce_runs=50, iperf_secs=5, dp_repeats=3,
                   sweep_repeats=3, endpoints=1000, join_marks=(1, 100, 500, 1000),
                   rss_marks=(0, 100, 500, 1000), rule_counts=(100, 1000, 10000, 50000),
                   update_repeats=5, idle_secs=60, mode_switches=20, scale_rules=10000)

    @classmethod
    def small(cls) -> "Sizes":
        return cls(quick=True, cp_runs=5, enforce_runs=8, iperf_secs=2, dp_repeats=2,
                   sweep_repeats=1, endpoints=60, join_marks=(1, 10, 30, 60),
                   rss_marks=(0, 10, 30, 60), rule_counts=(100, 1000, 10000),
                   update_repeats=3, idle_secs=5, mode_switches=6, scale_rules=10000,
                   ab_rounds=2, dp_rounds=2)


# --- statistics -----------------------------------------------------------------

def percentile(values: list, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def stats(values: Iterable[float]) -> dict:
    """median/min/max (+ p95/p99 and n) of ``values``; NaN-free input expected."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"n": 0, "median": None, "min": None, "max": None, "p95": None, "p99": None}
    return {"n": len(v), "median": percentile(v, 50), "min": min(v), "max": max(v),
            "p95": percentile(v, 95), "p99": percentile(v, 99)}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------

class CmdError(RuntimeError):
    pass


def sh(args: list, check: bool = True, timeout: float = 120, input: Optional[str] = None,
       env: Optional[dict] = None) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input, env=env)
    if check and res.returncode != 0:
        raise CmdError(f"{' '.join(args[:6])}{' ...' if len(args) > 6 else ''} failed "
                       f"({res.returncode}): {(res.stderr or res.stdout).strip()[:500]}")
    return res


_PLUGIN_AWAY = ("secnet.sock", 'plugin "secnet" not found', "legacy plugin")
_disturbances = [0]


def disturbances() -> int:
    """Count of disturbances so far: Docker commands sent again because the
    plugin was away, and changes of the daemon's processes that DaemonWatch
    saw (others restart the shared daemon). Callers compare it before and
    after a timed step and leave disturbed samples out."""
    return _disturbances[0]


def note_disturbance() -> None:
    """Count one disturbance (see :func:`disturbances`)."""
    _disturbances[0] += 1


def wait_for_plugin(patience: float = 600.0) -> None:
    give_up = now() + patience
    probe = Plugin()
    while not probe.alive():
        if now() > give_up:
            raise RuntimeError(f"the secnet plugin did not come back within {patience:.0f} s")
        time.sleep(0.25)


def docker(*args, check: bool = True, timeout: float = 120, before_retry: Callable = None) -> str:
    """A docker CLI call; sent again (up to 3 times) when it failed only because
    the secnet plugin was away, after ``before_retry`` undid any half-done work."""
    for attempt in range(4):
        res = sh(["docker", *args], check=False, timeout=timeout)
        if res.returncode == 0 or attempt == 3 or not any(m in res.stderr for m in _PLUGIN_AWAY):
            break
        _disturbances[0] += 1
        log(f"docker {args[0]}: the secnet plugin is away (restarted by someone?); waiting, then again")
        wait_for_plugin()
        if before_retry is not None:
            before_retry()
    if check and res.returncode != 0:
        raise CmdError(f"docker {' '.join(args[:6])}{' ...' if len(args) > 6 else ''} failed "
                       f"({res.returncode}): {(res.stderr or res.stdout).strip()[:500]}")
    return res.stdout.strip()


def timed(fn: Callable, *args, **kwargs):
    t0 = now()
    out = fn(*args, **kwargs)
    return now() - t0, out


# --- cleanup --------------------------------------------------------------------

class Cleanup:
    """A stack of undo actions, run newest first; each one's failure is logged."""

    def __init__(self):
        self._stack: list = []

    def push(self, what: str, fn: Callable, *args) -> None:
        self._stack.append((what, fn, args))

    def run(self) -> list:
        errors = []
        while self._stack:
            what, fn, args = self._stack.pop()
            try:
                fn(*args)
            except Exception as exc:  # keep going: undo as much as possible
                errors.append(f"{what}: {exc}")
                log(f"cleanup: {what}: {exc}")
        return errors


def remove_leftovers() -> None:
    """Remove what an interrupted earlier run left (only ``snbench`` objects)."""
    names = docker("ps", "-aq", "--filter", f"name=^{PREFIX}-", check=False).split()
    if names:
        docker("rm", "-f", *names, check=False)
    for net in docker("network", "ls", "-q", "--filter", f"name=^{PREFIX}-", check=False).split():
        docker("network", "rm", net, check=False)
    for ns in sh(["ip", "netns", "list"], check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith(PREFIX):
            sh(["ip", "netns", "del", name], check=False)
    sh(["nft", "delete", "table", "inet", PREFIX], check=False)
    remove_all_bench_rules()


DOCKER_USER = "DOCKER-USER"   # where bench.iptables_cmp jumps to its chain (one rule)
BENCH_CHAIN = f"{PREFIX}-pairs"   # bench.iptables_cmp's rules, all of them


def remove_all_bench_rules() -> int:
    """Delete every rule in DOCKER-USER tagged ``snbench`` (and nothing else), then
    ``BENCH_CHAIN`` if it is there (flushed and deleted in one ``iptables-restore``: one
    transaction, however many rules it holds). Returns the rules removed from DOCKER-USER."""
    removed = 0
    res = sh(["iptables", "-w", "5", "-S", DOCKER_USER], check=False)
    for line in res.stdout.splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", DOCKER_USER] or "--comment" not in words:
            continue
        if words[words.index("--comment") + 1] != PREFIX:
            continue
        if sh(["iptables", "-w", "5", "-D", DOCKER_USER, *words[2:]], check=False).returncode == 0:
            removed += 1
    res = sh(["iptables-restore", "-w", "5", "--noflush"], check=False, timeout=120,
             input=f"*filter\n-F {BENCH_CHAIN}\n-X {BENCH_CHAIN}\nCOMMIT\n")
    if res.returncode and "No chain" not in res.stderr:   # (none: nothing to remove)
        log(f"iptables: chain {BENCH_CHAIN} not removed: {res.stderr.strip()}")
    return removed


# --- others' whole-machine tests ----------------------------------------------------

# Test runs that take the whole machine: the managed-plugin tests stop the
# legacy daemon and remove every legacy secnet network (ours included).
_EXCLUSIVE = (b"test_managed_plugin", )
_WHOLE_TIERS = (b"tests", b"tests/", b"tests/e2e", b"tests/e2e/")


def exclusive_tests_running() -> list:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"pytest" not in b" ".join(argv[:3]):
            continue
        if any(m in a for a in argv for m in _EXCLUSIVE) or any(a in _WHOLE_TIERS for a in argv):
            found.append(" ".join(a.decode(errors="replace") for a in argv if a)[:160])
    return found


def wait_for_quiet(cap: float = 600.0) -> float:
    """Wait (at most ``cap`` s) while a test run that takes the whole machine
    runs, then for the plugin; returns the seconds waited."""
    t0 = now()
    said = False
    while exclusive_tests_running() and now() - t0 < cap:
        if not said:
            log(f"waiting: others' tests take the whole machine: {exclusive_tests_running()[0]}")
            said = True
        time.sleep(2)
    if not Plugin().alive():
        log("waiting for the secnet plugin to answer")
        wait_for_plugin()
    return now() - t0


# --- Docker ---------------------------------------------------------------------

def create_network(name: str, driver: str, subnet: str, *extra: str) -> str:
    return docker("network", "create", "-d", driver, "--subnet", subnet, *extra, name)


def run_container(name: str, network: str, ip: str, labels: dict = None, cmd=("sleep", "3600"),
                  extra: tuple = ()) -> str:
    args = ["run", "-d", "--name", name, "--network", network, "--ip", ip]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    return docker(*args, *extra, IMAGE, *cmd,
                  before_retry=lambda: sh(["docker", "rm", "-f", name], check=False))


def sandbox_key(container: str) -> str:
    return docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container)


def network_bridge(net: str, driver: str) -> str:
    nid = docker("network", "inspect", "-f", "{{.Id}}", net)
    if driver == "bridge":
        name = docker("network", "inspect", "-f",
                      '{{index .Options "com.docker.network.bridge.name"}}', net)
        return name if name and name != "<no value>" else "br-" + nid[:12]
    return "sn-" + nid[:12]


def set_neigh_retrans(netns: Optional[str], dev: str, ms: int = 10) -> None:
    """Shorter ARP retransmits on ``dev`` (of a namespace we made), so that a
    probe that starts before its target exists finds it within ~3*ms, not 1 s."""
    cmd = ["sh", "-c", f"echo {ms} > /proc/sys/net/ipv4/neigh/{dev}/retrans_time_ms"]
    if netns:
        cmd = ["nsenter", f"--net={netns}"] + cmd
    sh(cmd, check=False)


def engine_counts() -> dict:
    """Containers and networks of others, to tell how busy the engine was."""
    ps = docker("ps", "-a", "--format", "{{.Names}}", check=False).split()
    nets = docker("network", "ls", "--format", "{{.Name}}", check=False).split()
    return {"containers_other": sum(1 for n in ps if not n.startswith(PREFIX)),
            "networks_other": sum(1 for n in nets if not n.startswith(PREFIX)
                                  and n not in ("bridge", "host", "none"))}


# --- the plugin socket ----------------------------------------------------------

class PluginError(RuntimeError):
    pass


class Plugin:
    """POSTs JSON to the plugin's unix socket, as dockerd does (one connection, kept)."""

    def __init__(self, path: str = PLUGIN_SOCKET, timeout: float = 120):
        self.path, self.timeout = path, timeout
        self._conn: Optional[UnixHTTPConnection] = None
        self.retried = False

    def post(self, route: str, body: dict, patience: float = 600.0) -> dict:
        """One request; when the daemon is away (others restart it while we run),
        wait for it up to ``patience`` s and send again (every verb is idempotent).
        ``self.retried`` tells whether this request had to be sent again."""
        data = json.dumps(body)
        self.retried = False
        give_up = now() + patience
        while True:
            try:
                if self._conn is None:
                    self._conn = UnixHTTPConnection(self.path, self.timeout)
                self._conn.request("POST", route, data, {"Content-Type": "application/json"})
                resp = self._conn.getresponse()
                out = json.loads(resp.read() or b"{}")
                break
            except (OSError, http.client.HTTPException):
                self.close()
                self.retried = True
                if now() > give_up:
                    raise
                time.sleep(0.2)
        if isinstance(out, dict) and out.get("Err"):
            raise PluginError(f"{route}: {out['Err']}")
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def alive(self) -> bool:
        try:
            return "NetworkDriver" in json.dumps(self.post("/Plugin.Activate", {}, patience=0))
        except Exception:
            return False


# --- the daemon's processes -----------------------------------------------------


# --- network namespaces -----------------------------------------------------------


