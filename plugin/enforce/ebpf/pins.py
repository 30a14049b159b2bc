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
import logging
import os
import shutil
from dataclasses import dataclass, field

from . import libbpf

log = logging.getLogger(__name__)
DEFAULT_ROOT = "/sys/fs/bpf/secnet"
BPFFS = "/sys/fs/bpf"
MAPS = ("state", "settings", "endpoints", "members", "policy", "restricted", "cidrs", "allowed",
        "dropped", "conntrack", "ct_new", "reported", "scratch", "published", "logcap", "subnets",
        "fqdn", "frags")
#: the flow tables (lib/conntrack.h): answered flows, flows no reply has been seen of
CT_MAPS = ("conntrack", "ct_new")
#: made anew together when one of them has another shape: the old programs go on reading a
#: consistent policy (the flip of a shared ``state`` would put an old map's other version in
#: force), and flows tracked under the old generations are judged anew (generations restart)
TOGETHER = ("state", "settings", "policy", "restricted", "cidrs", *CT_MAPS)
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


def open_network(root: str, network_id: str, partial: bool = False) -> Handle:
    """Adopt a network from its pins. Raises LibbpfError(ENOENT) when some pin is
    missing -- unless ``partial`` (to remove it): then the handle has what is pinned
    (an older build's network lacks the maps it did not have)."""
    path = network_dir(root, network_id)
    h = Handle(network_id, path)
    try:
        for where, names, into in ((path, MAPS, h.maps), (root, (EVENTS,), h.maps), (path, PROGS, h.progs)):
            for name in names:
                try:
                    into[name] = libbpf.obj_get(os.path.join(where, name))
                except libbpf.LibbpfError as exc:
                    if not (partial and exc.errno == errno.ENOENT):
                        raise
    except BaseException:
        h.close()
        raise
    return h


def load_network(root: str, network_id: str, obj_path: str, sizes: dict) -> Handle:
    """Load the object for a network, reusing its pinned maps when present,
    pin the programs, and return the opened pins.

    ``sizes``: map name -> max entries. A pinned map whose shape (type, key and
    value size, max entries, flags) is not the object's -- an older build's, or
    another size -- is unpinned first and made anew (:func:`_drop_other_shapes`),
    as is a missing one (a map an older build did not have); the programs attached
    until the caller attaches the new ones keep the maps they hold. Raises LibbpfError.
    """
    path = network_dir(root, network_id)
    os.makedirs(path, mode=0o700, exist_ok=True)
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
        made = _drop_other_shapes(obj, {name: os.path.join(path, name) for name in MAPS}
                                  | {EVENTS: os.path.join(root, EVENTS)})
        if made:
            log.warning("eBPF network %s: map(s) %s of another shape (an older build's) made anew",
                        network_id[:12], ", ".join(made))
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


def _drop_other_shapes(obj, pinned: dict) -> list:
    """Unpin each map of ``pinned`` (name -> pin path) whose shape is not the one
    ``obj`` defines, so that the load makes a new one instead of failing (libbpf
    refuses to reuse a pinned map of another type, key or value size, max entries or
    flags: libbpf.c ``map_is_reuse_compat``), and with one of :data:`TOGETHER` all of
    them. Returns the names unpinned.

    What such a map held is gone: the daemon writes its own state again (policy,
    settings, endpoints, members, subnets, published ports); the flow tables
    (:data:`CT_MAPS`) start empty, so every flow is judged anew on its next packet
    (a reply that comes first is judged as a flow of its own); counters, learned DNS
    addresses and the drop log's memory start empty. A map not pinned (``ct_new``
    under a build before it) is made by the load, the others kept: an older
    build's ``conntrack`` (answered and unanswered flows in one table) is kept as
    the answered table, so its flows go on. Programs attached now keep the old map."""
    made = [name for name, pin in pinned.items() if _other_shape(obj, name, pin)]
    if set(made) & set(TOGETHER):
        made = sorted(set(made) | {name for name in TOGETHER if name in pinned})
    for name in made:
        _unlink(pinned[name])
    return made


def _other_shape(obj, name: str, pin: str) -> bool:
    """Is a map pinned at ``pin`` whose shape is not map ``name`` of ``obj``?"""
    try:
        fd = libbpf.obj_get(pin)
    except libbpf.LibbpfError:
        return False   # not pinned: the load makes it
    try:
        return libbpf.map_shape(fd) != obj.map_shape(name)
    finally:
        os.close(fd)


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
