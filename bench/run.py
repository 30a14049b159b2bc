"""secnet benchmarks, all sections in one go on this machine.

    .venv/bin/python -m bench.run [--quick] [--out DIR] [--skip SECTION ...]

Sections: control (network create/rm, run until the network answers),
enforce (time to enforce, forbidden probes), dataplane + scale (throughput
and latency: veth, bridge, secnet; joins, rule updates, RSS with 1,000
endpoints and 10,000 rules), datapath (veth, bridge, nftables and
eBPF backends in namespaces, the nftables backend's calls against N rules),
iptables (DOCKER-USER pair rules against secnet), idle (daemon CPU while left alone),
memory (issue 12's RSS scenario -- 1,000 endpoints + 10,000 rules, then all removed -- on a
private daemon in a namespace, without the rule sweep: bench/memory.py),
dns (DNS-name rules: how long an answer is held, joins with 10,000 learned
addresses; both backends, in namespaces: bench/dns_hold.py). Writes ``<DATE>.md``,
``<DATE>.json`` and ``<DATE>-*.png`` into the output directory (default
``bench/results``; with ``--quick``: ``.run/bench-quick``, small sizes, for
development only) and ``bench/README-snippet.md`` (full runs of every section only).

Needs root, the engine, the image ``secnet-busybox``, the secnet plugin on
its socket, iperf3, ping and matplotlib: ``make bench`` sees to all of it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback

from . import common, control, daemon, dataplane, datapath, dns_hold, enforce, iptables_cmp, memory, report, scale
from .common import REPO, Cleanup, Sizes, docker, log, sh
from .daemon import DaemonWatch

SECTIONS = ("idle", "control", "enforce", "dataplane", "datapath", "iptables", "dns", "memory")


def _first_line(args) -> str:
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=20)
        return (res.stdout or res.stderr).strip().splitlines()[0]
    except Exception as exc:
        return f"unknown ({exc})"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def _others_busy() -> dict:
    """What else ran on the machine: others' test processes, containers, load."""
    pytest = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"pytest" in argv[:3] or (len(argv) > 2 and argv[1] == b"-m" and argv[2] == b"pytest"):
                pytest += 1
    out = {"pytest_processes": pytest, "loadavg": open("/proc/loadavg").read().split()[:3]}
    out.update(common.engine_counts())
    return out


def machine_info() -> dict:
    git = ["git", "--no-optional-locks", "-C", REPO]
    commit = _first_line(git + ["rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(git + ["status", "--porcelain", "--", "plugin", "segmentation"],
                           capture_output=True, text=True).stdout.strip()
    try:
        import matplotlib
        mpl = matplotlib.__version__
    except ImportError:
        mpl = "missing"
    return {
        "date": time.strftime("%Y-%m-%d"), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(), "cpu": _cpu_model(), "memory_gib": _mem_gib(),
        "kernel": platform.release(), "os": _os_name(),
        "engine": docker("version", "--format", "{{.Server.Version}}", check=False),
        "docker_cli": docker("version", "--format", "{{.Client.Version}}", check=False),
        "iperf3": _first_line(["iperf3", "--version"]), "nft": _first_line(["nft", "--version"]),
        "iptables": _first_line(["iptables", "-V"]), "python": platform.python_version(),
        "matplotlib": mpl,
        "secnet_commit": commit + (" (plugin/segmentation modified in the work tree)" if dirty else ""),
    }


def _section(results: dict, name: str, watch: DaemonWatch, fn, *args, attempts: int = 2):
    """Run one section; on failure (others' tests can remove our networks or stop
    the daemon) clean up and try it once more."""
    t0 = time.time()
    first_error = None
    for attempt in range(attempts):
        waited = common.wait_for_quiet()
        if waited > 1:
            results.setdefault("waited_for_others_s", {})[name] = round(waited, 1)
        watch.section = name
        try:
            results[name] = fn(*args)
            if first_error:
                results[name]["first_attempt_error"] = first_error
            break
        except Exception as exc:
            log(f"section {name} failed: {exc}")
            first_error = f"{type(exc).__name__}: {exc}"
            results[name] = {"error": first_error, "traceback": traceback.format_exc()}
            common.remove_leftovers()
            if attempt + 1 < attempts:
                log(f"section {name}: trying once more")
    results.setdefault("durations_s", {})[name] = round(time.time() - t0, 1)


def dataplane_and_scale(sizes: Sizes, watch: DaemonWatch) -> dict:
    """Data-plane configurations and the scale network, which holds the last one.

    Each step that fails is tried once more (the daemon is shared and others
    restart it); when our network or containers are gone (others' tests remove
    every secnet network), the whole section fails and run.py starts it again.
    """
    cleanup = Cleanup()
    out: dict = {"method": dataplane.__doc__.strip(), "step_errors": []}
    sc = scale.Scale(sizes, cleanup)

    def step(name, fn, *args):
        for attempt in (1, 2):
            try:
                return fn(*args)
            except Exception as exc:
                log(f"step {name} failed: {exc}")
                out["step_errors"].append(f"{name} (attempt {attempt}): {type(exc).__name__}: {exc}")
                if not sc.alive():
                    raise RuntimeError(f"step {name}: the scale network or its containers are gone "
                                       "(removed by someone else?)") from exc
                if attempt == 2:
                    return None
                common.wait_for_quiet()

    try:
        log("data plane: setting up veth, bridge, secnet, secnet-policy")
        pairs = [dataplane.veth_pair(cleanup)] + dataplane.docker_pairs(cleanup)
        pairs.append(dataplane.container_veth_pair(cleanup, pairs[-1]))   # secnet-ebpf's containers
        watch.section = "scale"
        log("scale: network with two containers")
        pairs.append(sc.setup())
        for p in pairs:
            dataplane.check_reachable(p)
        step("grow", sc.grow)
        log(f"scale: policy set and throughput against N rules {sizes.rule_counts}")
        step("sweep", sc.sweep)
        step("joins at max rules", sc.joins_at_max_rules)
        watch.section = "dataplane"
        log(f"data plane: {len(pairs)} configurations x {sizes.dp_repeats} repeats, round-robin")
        out["configs"] = step("data plane rounds", dataplane.measure, pairs, sizes.dp_repeats,
                              sizes.iperf_secs)
        # the targets "with 1,000 endpoints + 10,000 rules >= 0.98x without" and "secnet >= 1.0x
        # Docker's bridge": the four pairs alone, interleaved, judged on the median of the
        # per-round ratios (bridge next to secnet in both directions)
        byname = {p.name: p for p in pairs}
        log(f"data plane: A/B {' / '.join(dataplane.AB_PAIRS)}, {sizes.ab_rounds} rounds")
        out["scale_ab"] = step("A/B", dataplane.ab, [byname[n] for n in dataplane.AB_PAIRS],
                               sizes.ab_rounds, sizes.iperf_secs, "secnet")
        watch.section = "idle-at-scale"
        log(f"idle CPU with {sizes.endpoints} endpoints and {sizes.scale_rules} rules: "
            f"{sizes.idle_secs} s")
        out["idle_at_scale"] = daemon.idle_cpu(sizes.idle_secs)
        out["idle_at_scale"]["rss_mib"] = daemon.daemon_rss_sample()
        watch.section = "scale"
        step("leaves", sc.remove_endpoints)
    finally:
        errors = cleanup.run()
        sc.plugin.close()
        out["scale"] = sc.result
        out["cleanup_errors"] = errors
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for development")
    ap.add_argument("--out", help="output directory (default bench/results, or .run/bench-quick)")
    ap.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: must run as root", file=sys.stderr)
        return 2
    sizes = Sizes.small() if args.quick else Sizes.full()
    out_dir = args.out or os.path.join(REPO, ".run/bench-quick" if args.quick else "bench/results")
    os.makedirs(out_dir, exist_ok=True)
    try:
        common.wait_for_plugin(120)  # someone may be restarting the shared daemon right now
    except RuntimeError:
        print(f"bench: the secnet plugin does not answer on {common.PLUGIN_SOCKET} "
              "(bash scripts/plugin.sh start)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ping", "nsenter", "iptables-restore", "nft"):
        if sh(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
            print(f"bench: {tool} is missing (make bench installs it)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupt)  # a TERM still writes what was measured
    t_start = time.time()
    common.remove_leftovers()
    results: dict = {"sizes": sizes.__dict__, "machine": machine_info(), "busy_at_start": _others_busy()}
    log(f"bench: {'quick' if sizes.quick else 'full'} run; results to {out_dir}")
    watch = DaemonWatch()
    watch.start()
    try:
        if "idle" not in args.skip:
            log(f"idle CPU of the daemon: {sizes.idle_secs} s")
            _section(results, "idle", watch, daemon.idle_cpu, sizes.idle_secs)
            results["idle"]["rss_mib"] = daemon.daemon_rss_sample()
        if "control" not in args.skip:
            _section(results, "control", watch, control.run, sizes)
        if "enforce" not in args.skip:
            _section(results, "enforce", watch, enforce.run, sizes)
        if "dataplane" not in args.skip:
            _section(results, "dataplane", watch, dataplane_and_scale, sizes, watch)
        if "datapath" not in args.skip:
            _section(results, "datapath", watch, datapath.run, sizes)
        if "iptables" not in args.skip:
            _section(results, "iptables", watch, iptables_cmp.run, sizes)
        if "memory" not in args.skip:
            log(f"memory: a private daemon, {sizes.endpoints} endpoints + {sizes.scale_rules} rules, then removed")
            _section(results, "memory", watch, memory.section, sizes)
        if "dns" not in args.skip:
            log("dns: hold latency of answers and joins with 10,000 learned addresses, per backend")
            _section(results, "dns", watch, dns_hold.run, sizes)
    except KeyboardInterrupt:
        results["interrupted"] = True
        log("interrupted: cleaning up")
    finally:
        watch.stop()
        common.remove_leftovers()
        results["busy_at_end"] = _others_busy()
        results["daemon_restarts_by_others"] = {"by_section": watch.restarts_by_section(),
                                                "changes": watch.changes}
        results["total_seconds"] = round(time.time() - t_start, 1)
        date = results["machine"]["date"]
        path = os.path.join(out_dir, f"{date}.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True, default=str)
        log(f"wrote {path}")
    # the project README's snippet only from a full run of every section (not from --skip)
    md = report.write(results, out_dir, snippet=not sizes.quick and not args.skip)
    log(f"wrote {md} ({results['total_seconds']:.0f} s in all)")
    print(report.headline_text(results))
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
