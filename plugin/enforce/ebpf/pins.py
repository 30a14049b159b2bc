"""Where a network's programs and maps live: pinned in bpffs.

Layout, under the pin root (``/sys/fs/bpf/secnet`` by default)::

    <root>/events                    the ring buffer of drop reports (all networks)
    <root>/<network-id[:12]>/<map>   every map of lib/maps.h
    <root>/<network-id[:12]>/from_container, to_container   the programs

Pinned objects outlive the process that loaded them; the tc filters on the
veths hold the programs, the programs hold the maps. So enforcement goes on
while the daemon is down, and a new daemon *adopts* a network by opening
its pins (:func:`open_network`), or reloads the object (:func:`load_network`),
which reuses the pinned maps -- their entries, conntrack included, survive.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
from dataclasses import dataclass, field

from . import libbpf, maps

DEFAULT_ROOT = "/sys/fs/bpf/secnet"
BPFFS = "/sys/fs/bpf"
MAPS = ("state", "settings", "endpoints", "members", "policy", "restricted", "cidrs", "allowed",
        "dropped", "conntrack", "reported", "scratch", "published", "logcap", "subnets", "fqdn",
        "frags")
PROGS = ("from_container", "to_container")
EVENTS = "events"


def network_dir(root: str, network_id: str) -> str:
    return os.path.join(root, network_id[:12])


def bpffs_mounted(path: str = BPFFS) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == path and line.split()[2] == "bpf" for line in mounts)


def ensure_bpffs(root: str, mount: bool = True) -> None:
    """Mount bpffs at /sys/fs/bpf when missing (only if ``mount``), and make ``root``.

    ``mount=False`` (the managed plugin): a bpffs mounted in the plugin's own
    mount namespace would vanish, pins and all, when the plugin stops, so the
    host's must be there (bound in by config.json). Raises OSError when it is
    missing then, or when it cannot be mounted (no CAP_SYS_ADMIN, no bpffs).
    """
    if root.startswith(BPFFS + "/") and not bpffs_mounted():
        if not mount:
            raise OSError(f"{BPFFS} is not a bpffs mount; mount the host's "
                          f"(mount -t bpf bpf {BPFFS}), then restart secnet")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount bpffs at {BPFFS}: {os.strerror(err)}")
    os.makedirs(root, mode=0o700, exist_ok=True)


@dataclass
class Handle:
    """Open fds of one network's pinned maps and programs."""

    network_id: str
    path: str
    maps: dict = field(default_factory=dict)
    progs: dict = field(default_factory=dict)

    def close(self) -> None:
        for fd in list(self.maps.values()) + list(self.progs.values()):
            os.close(fd)
        self.maps.clear()
        self.progs.clear()


def open_network(root: str, network_id: str) -> Handle:
    """Adopt a network from its pins. Raises LibbpfError(ENOENT) when some pin is missing."""
    path = network_dir(root, network_id)
    h = Handle(network_id, path)
    try:
        for name in MAPS:
            h.maps[name] = libbpf.obj_get(os.path.join(path, name))
        h.maps[EVENTS] = libbpf.obj_get(os.path.join(root, EVENTS))
        for name in PROGS:
            h.progs[name] = libbpf.obj_get(os.path.join(path, name))
    except BaseException:
        h.close()
        raise
    return h


def load_network(root: str, network_id: str, obj_path: str, sizes: dict) -> Handle:
    """Load the object for a network, reusing its pinned maps when present,
    pin the programs, and return the opened pins.

    ``sizes``: map name -> max entries (only for maps created now). Raises
    LibbpfError (EINVAL when pinned maps have another layout: a format
    upgrade needs :func:`remove_pins` first -- except ``conntrack``, whose
    older layouts are replaced here, flows judged anew).
    """
    path = network_dir(root, network_id)
    os.makedirs(path, mode=0o700, exist_ok=True)
    _drop_older_conntrack(path)
    # per-CPU scratch space holds nothing between packets, and its layout (struct
    # pkt) changes between builds: always a new one (attached programs keep theirs)
    _unlink(os.path.join(path, "scratch"))
    obj = libbpf.BpfObject(obj_path)
    try:
        for name in MAPS:
            obj.set_pin_path(name, os.path.join(path, name))
            if name in sizes:
                obj.set_max_entries(name, sizes[name])
        obj.set_pin_path(EVENTS, os.path.join(root, EVENTS))
        obj.load()
        for name in PROGS:
            pin = os.path.join(path, name)
            tmp = pin + "_new"   # bpffs refuses dots in names
            _unlink(tmp)
            libbpf.obj_pin(obj.prog_fd(name), tmp)
            os.replace(tmp, pin)   # bpffs renames atomically: never a moment without the pin
    finally:
        obj.close()
    return open_network(root, network_id)


def _drop_older_conntrack(path: str) -> None:
    """Unpin a ``conntrack`` map of another value layout (an older build's) so
    that the load makes a new one: its flows are judged anew on their next
    packet (a reply that comes first is judged as a flow of its own). The
    programs attached now keep the old map until they are replaced."""
    pin = os.path.join(path, "conntrack")
    try:
        fd = libbpf.obj_get(pin)
    except libbpf.LibbpfError:
        return
    try:
        older = libbpf.map_value_size(fd) != maps.CT_VAL.size
    finally:
        os.close(fd)
    if older:
        _unlink(pin)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_pins(root: str, network_id: str) -> bool:
    """Unpin everything of a network; False when there was nothing."""
    path = network_dir(root, network_id)
    if not os.path.isdir(path):
        return False
    shutil.rmtree(path, ignore_errors=True)
    if os.path.isdir(path):
        raise OSError(errno.EBUSY, f"cannot remove {path}")
    return True


def remove_events(root: str) -> bool:
    """Unpin the shared report buffer (when no network is left); False if absent."""
    try:
        os.unlink(os.path.join(root, EVENTS))
    except FileNotFoundError:
        return False
    return True


def pinned_networks(root: str) -> set:
    """12-character ids of the networks pinned under ``root``."""
    try:
        return {name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name))}
    except FileNotFoundError:
        return set()
