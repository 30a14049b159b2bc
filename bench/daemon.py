"""The secnet daemon as the benchmark sees it: its CLI, its processes (found by
the plugin socket they hold), their RSS and CPU time, and a watch for restarts
by someone else."""
from __future__ import annotations

import array
import os
import threading
import time
from typing import Optional

from .common import (CLK_TCK, PLUGIN_SOCKET, SECNET_CLI, CmdError, disturbances, log, note_disturbance,
                     now, sh, stats, wait_for_plugin)


def secnet_cli(*args, timeout: float = 600) -> tuple:
    """Run the ``secnet`` CLI; when it cannot reach the daemon (restarted by
    someone), wait for the daemon and run it again. Returns (ms of the last
    attempt, disturbed?)."""
    disturbed = False
    for attempt in range(4):
        n0 = disturbances()
        t0 = now()
        res = sh([SECNET_CLI, *args], check=False, timeout=timeout)
        ms = (now() - t0) * 1000
        if res.returncode == 0:
            return ms, disturbed or disturbances() != n0
        if "cannot reach the secnet daemon" not in res.stderr or attempt == 3:
            raise CmdError(f"secnet {' '.join(args[:3])} ... failed: {res.stderr.strip()[:300]}")
        disturbed = True
        note_disturbance()
        log("secnet CLI: the daemon is away; waiting, then again")
        wait_for_plugin()
    raise AssertionError("unreachable")


def daemon_pids() -> list:
    """PIDs of the legacy secnet-plugin processes (gunicorn master and worker):
    those in the host's mount namespace (a managed plugin, which others' tests
    install now and then, runs in its own)."""
    pids = []
    own_mnt = os.readlink("/proc/self/ns/mnt")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if not any(a.endswith(b"secnet-plugin") for a in argv[:3]) or b"nohup" in argv[0]:
                continue
            if os.readlink(f"/proc/{entry}/ns/mnt") != own_mnt:
                continue
        except OSError:
            continue
        pids.append(int(entry))
    if len(pids) > 2:  # two daemons (a racy restart by others): the one serving the socket
        serving = [p for p in pids if _holds_socket(p)]
        pids = serving or pids
    return sorted(pids)


def _socket_inode(path: str = PLUGIN_SOCKET) -> Optional[str]:
    try:
        with open("/proc/net/unix") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7] == path:
                    return parts[6]
    except OSError:
        pass
    return None


def _holds_socket(pid: int) -> bool:
    inode = _socket_inode()
    if inode is None:
        return False
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def _sum_field(pids: list, name: str, key: str) -> Optional[int]:
    """Sum over ``pids`` of the ``key`` line (kB) of /proc/<pid>/``name``; None if one is gone."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    if line.startswith(key):
                        total += int(line.split()[1])
                        break
        except OSError:
            return None
    return total


def rss_kib(pids: list) -> Optional[int]:
    """VmRSS summed over ``pids``, KiB: the pages both processes map (libpython,
    the .so's, what the worker still shares with the master after the fork)
    count once per process."""
    return _sum_field(pids, "status", "VmRSS:")


def pss_kib(pids: list) -> Optional[int]:
    """Pss (proportional set size, /proc/<pid>/smaps_rollup) summed over ``pids``,
    KiB: a page shared by k processes counts 1/k in each, so the sum counts
    every page of the daemon once. Always <= :func:`rss_kib` of the same pids."""
    return _sum_field(pids, "smaps_rollup", "Pss:")


def union_rss_kib(pids: list) -> Optional[int]:
    """Resident pages mapped by any of ``pids``, each physical page counted once,
    KiB: the RSS of the daemon taken as one thing (a page that master and worker
    share after the fork is one page of RAM; VmRSS counts it in each, Pss splits it
    with every process on the host that maps it, other Python processes included).
    From /proc/<pid>/pagemap (proc(5): bit 63 present, bits 0-54 the page frame
    number, shown to root only); None if a process is gone or frames are hidden."""
    frames: set = set()
    size = os.sysconf("SC_PAGE_SIZE")
    try:
        for pid in pids:
            with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
                for line in maps:
                    first, end = (int(x, 16) // size for x in line.split(None, 1)[0].split("-"))
                    if line.rstrip().endswith("[vsyscall]"):
                        continue
                    pagemap.seek(first * 8)
                    entries = array.array("Q", pagemap.read((end - first) * 8))
                    frames.update(e & _PFN for e in entries if e >> 63)
    except OSError:
        return None
    if frames and frames <= {0}:   # not root: every frame number reads 0
        return None
    return len(frames) * size // 1024


_PFN = (1 << 55) - 1


def cpu_seconds(pids: list) -> Optional[float]:
    """utime+stime of ``pids`` (threads included), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # fields 14, 15 of stat(5)
    return total / CLK_TCK


def daemon_rss_sample(samples: int = 5, gap: float = 0.2) -> dict:
    """RSS of the daemon (VmRSS summed over its processes), MiB: stats of
    ``samples`` readings ``gap`` s apart, plus ``pids`` and, under ``pss_mib``,
    the stats of the Pss sum read at the same moments (see :func:`pss_kib`)."""
    values, pss, pids = [], [], daemon_pids()
    give_up = now() + 60
    while len(pids) < 2 and now() < give_up:  # being restarted by someone: wait for it
        time.sleep(0.5)
        pids = daemon_pids()
    for _ in range(samples):
        v, p = rss_kib(pids), pss_kib(pids)
        if v is not None:
            values.append(v / 1024.0)
        if p is not None:
            pss.append(p / 1024.0)
        time.sleep(gap)
    out = stats(values)
    out["pids"] = pids
    out["pss_mib"] = stats(pss)
    return out


def idle_cpu(seconds: int, window: int = 10) -> dict:
    """CPU the daemon used while we left it alone, in % of one core.

    /proc/<pid>/stat utime+stime of the secnet-plugin processes, read every
    second; only seconds in which the same processes lived throughout count
    (others restart the daemon while we run), until ``seconds`` of such time
    are covered (or 3x that has passed). Figures per ``window``-second slice.
    """
    covered, used, slices, restarts = 0.0, 0.0, [], 0
    slice_t, slice_c = 0.0, 0.0
    pids = daemon_pids()
    cpu, t = cpu_seconds(pids), now()
    give_up = t + 3 * seconds
    while covered < seconds and now() < give_up:
        time.sleep(1.0)
        pids2 = daemon_pids()
        cpu2, t2 = cpu_seconds(pids2), now()
        if pids2 == pids and cpu is not None and cpu2 is not None and pids:
            covered += t2 - t
            used += cpu2 - cpu
            slice_t += t2 - t
            slice_c += cpu2 - cpu
            if slice_t >= window - 0.01:
                slices.append(100.0 * slice_c / slice_t)
                slice_t, slice_c = 0.0, 0.0
        else:
            restarts += 1
        pids, cpu, t = pids2, cpu2, t2
    return {"covered_seconds": round(covered, 1), "cpu_seconds": round(used, 3),
            "percent_of_one_core": 100.0 * used / covered if covered else None,
            "per_slice_percent": stats(slices), "slice_seconds": window,
            "daemon_restarts_seen": restarts, "pids": pids}


class DaemonWatch(threading.Thread):
    """Notes every change of the daemon's processes (others restart it while we
    run), tagged with the section that was running."""

    def __init__(self, every: float = 0.5):
        super().__init__(name="daemon-watch", daemon=True)
        self.every = every
        self.section = "start"
        self.changes: list = []
        self._halt = threading.Event()

    def run(self) -> None:
        last = daemon_pids()
        while not self._halt.wait(self.every):
            pids = daemon_pids()
            if pids != last:
                note_disturbance()  # samples spanning this change are left out
                self.changes.append({"time": time.strftime("%H:%M:%S"), "section": self.section,
                                     "pids": pids})
                last = pids

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def restarts_by_section(self) -> dict:
        """Count of (re)starts: changes to a non-empty set of processes."""
        out: dict = {}
        for c in self.changes:
            if c["pids"]:
                out[c["section"]] = out.get(c["section"], 0) + 1
        return out
