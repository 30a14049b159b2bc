"""A thin ctypes binding over libbpf (``libbpf.so.1``, Debian ``libbpf1``).

Only what secnet's datapath needs: open an object file, size and pin its
maps, load it, pin its programs; map element calls on file descriptors;
tc clsact hooks and filters (``bpf_tc_*``); and a ring buffer reader.
libbpf does the ELF parsing, relocation and the bpf() system calls; this
module only passes bytes and integers across. Every failure raises
:class:`LibbpfError` carrying the errno, so callers branch on it
(``ENOENT`` when a pin or element is absent).
"""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno as errno_mod
import logging
import os
import threading
from typing import Callable, Iterator, Optional

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1


log = logging.getLogger(__name__)
#: libbpf's last messages (the verifier's log among them), for error reports
RECENT = collections.deque(maxlen=40)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class LibbpfError(OSError):
    """A libbpf call failed; ``errno`` says why."""


def _route_print(lib_: ctypes.CDLL) -> None:
    """libbpf prints through a callback: format it with vsnprintf, keep it, log at debug
    (libbpf's warnings include expected ones, e.g. a clsact qdisc that exists already)."""
    libc = ctypes.CDLL(None)
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

    def printer(_level, fmt, args):
        buf = ctypes.create_string_buffer(1024)
        libc.vsnprintf(buf, len(buf), fmt, args)
        line = buf.value.decode(errors="replace").rstrip()
        RECENT.append(line)
        log.debug("libbpf: %s", line)
        return 0
    global _printer
    _printer = _PRINT_FN(printer)
    lib_.libbpf_set_print.restype = ctypes.c_void_p
    lib_.libbpf_set_print.argtypes = [_PRINT_FN]
    lib_.libbpf_set_print(_printer)


_printer = None


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    vp, c_int, c_uint = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
    sigs = {
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (c_int, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_map__set_max_entries": (c_int, [vp, ctypes.c_uint32]),
        "bpf_map__set_pin_path": (c_int, [vp, ctypes.c_char_p]),
        "bpf_map__fd": (c_int, [vp]),
        "bpf_map__type": (c_int, [vp]),
        "bpf_map__key_size": (c_uint, [vp]),
        "bpf_map__value_size": (c_uint, [vp]),
        "bpf_map__max_entries": (c_uint, [vp]),
        "bpf_map__map_flags": (c_uint, [vp]),
        "bpf_program__fd": (c_int, [vp]),
        "bpf_obj_get": (c_int, [ctypes.c_char_p]),
        "bpf_obj_pin": (c_int, [c_int, ctypes.c_char_p]),
        "bpf_map_update_elem": (c_int, [c_int, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, vp, vp]),
        "bpf_map_delete_elem": (c_int, [c_int, vp]),
        "bpf_map_get_next_key": (c_int, [c_int, vp, vp]),
        "bpf_tc_hook_create": (c_int, [vp]),
        "bpf_tc_attach": (c_int, [vp, vp]),
        "bpf_tc_detach": (c_int, [vp, vp]),
        "bpf_tc_query": (c_int, [vp, vp]),
        "ring_buffer__new": (vp, [c_int, vp, vp, vp]),
        "ring_buffer__poll": (c_int, [vp, c_int]),
        "ring_buffer__free": (None, [vp]),
        "libbpf_num_possible_cpus": (c_int, []),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, vp, ctypes.POINTER(ctypes.c_uint32)]),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """The loaded libbpf; raises LibbpfError(ENOENT) when it is not installed."""
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                _lib = _load()
            except OSError as exc:
                raise LibbpfError(errno_mod.ENOENT, f"libbpf.so.1 not loadable: {exc}") from None
            _route_print(_lib)
        return _lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret if ret != -1 else (ctypes.get_errno() or errno_mod.EINVAL)
        raise LibbpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def _ptr(ptr, what: str):
    if not ptr:
        err = ctypes.get_errno() or errno_mod.EINVAL
        raise LibbpfError(err, f"{what}: {os.strerror(err)}")
    return ptr


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# --- objects ------------------------------------------------------------------

class BpfObject:
    """An opened (then loaded) object file; ``close()`` releases its fds
    (pinned maps and programs, and attached programs, stay in the kernel)."""

    def __init__(self, path: str):
        self._obj = _ptr(lib().bpf_object__open_file(path.encode(), None), f"open {path}")

    def _map(self, name: str):
        return _ptr(lib().bpf_object__find_map_by_name(self._obj, name.encode()), f"map {name}")

    def _prog(self, name: str):
        return _ptr(lib().bpf_object__find_program_by_name(self._obj, name.encode()),
                    f"program {name}")

    def set_max_entries(self, name: str, size: int) -> None:
        _check(lib().bpf_map__set_max_entries(self._map(name), size), f"size of map {name}")

    def set_pin_path(self, name: str, path: str) -> None:
        """Pin map ``name`` at ``path`` on load, or reuse the map pinned there."""
        _check(lib().bpf_map__set_pin_path(self._map(name), path.encode()), f"pin path of {name}")

    def load(self) -> None:
        """Load (verify) the programs, create or reuse the maps; on failure the
        error carries the end of libbpf's log (the verifier's verdict)."""
        RECENT.clear()
        ret = lib().bpf_object__load(self._obj)
        if ret < 0:
            tail = " | ".join(line for line in list(RECENT)[-4:] if line)
            raise LibbpfError(-ret, f"load object: {os.strerror(-ret)}: {tail}")

    def map_shape(self, name: str) -> tuple:
        """(type, key size, value size, max entries, flags) of map ``name`` as this object
        defines it (after :meth:`set_max_entries`): what libbpf compares with a pinned
        map before it reuses it (libbpf.c ``map_is_reuse_compat``)."""
        m = self._map(name)
        return (lib().bpf_map__type(m), lib().bpf_map__key_size(m), lib().bpf_map__value_size(m),
                lib().bpf_map__max_entries(m), lib().bpf_map__map_flags(m))

    def map_fd(self, name: str) -> int:
        return _check(lib().bpf_map__fd(self._map(name)), f"fd of map {name}")

    def prog_fd(self, name: str) -> int:
        return _check(lib().bpf_program__fd(self._prog(name)), f"fd of program {name}")

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


def obj_get(path: str) -> int:
    """A new fd of the object pinned at ``path`` (LibbpfError ENOENT if none)."""
    return _check(lib().bpf_obj_get(path.encode()), f"open pin {path}")


def prog_id(fd: int) -> int:
    """The kernel's id of the program behind ``fd`` (bpf_prog_info.id)."""
    info = ctypes.create_string_buffer(8)          # type, id: the first two u32 of bpf_prog_info
    size = ctypes.c_uint32(8)
    _check(lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "program info")
    return int.from_bytes(info.raw[4:8], "little")


def map_value_size(fd: int) -> int:
    """The value size in bytes of the map behind ``fd`` (bpf_map_info.value_size)."""
    info = ctypes.create_string_buffer(16)         # type, id, key_size, value_size: u32 each
    size = ctypes.c_uint32(len(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "map info")
    return int.from_bytes(info.raw[12:16], "little")


def map_shape(fd: int) -> tuple:
    """(type, key size, value size, max entries, flags) of the map behind ``fd``
    (the first fields of bpf_map_info: type, id, key_size, value_size, max_entries,
    map_flags, u32 each; include/uapi/linux/bpf.h)."""
    info = ctypes.create_string_buffer(24)
    size = ctypes.c_uint32(len(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "map info")
    typ, _id, key, value, entries, flags = (int.from_bytes(info.raw[i:i + 4], "little") for i in range(0, 24, 4))
    return typ, key, value, entries, flags


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


# --- map elements ---------------------------------------------------------------

def _buf(data: bytes):
    return ctypes.create_string_buffer(data, len(data))


def update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    _check(lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags), "map update")


def lookup(fd: int, key: bytes, value_size: int) -> Optional[bytes]:
    """The value of ``key`` (``value_size`` bytes; per-CPU maps: all CPUs'), or None."""
    out = ctypes.create_string_buffer(value_size)
    ret = lib().bpf_map_lookup_elem(fd, _buf(key), out)
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        if err == errno_mod.ENOENT:
            return None
        _check(ret, "map lookup")
    return out.raw


def delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there."""
    ret = lib().bpf_map_delete_elem(fd, _buf(key))
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        if err == errno_mod.ENOENT:
            return False
        _check(ret, "map delete")
    return True


def _map_sizes(fd: int) -> tuple:
    """(key_size, value_size) of the map behind ``fd`` (bpf_map_info)."""
    info = ctypes.create_string_buffer(16)         # type, id, key_size, value_size: u32 each
    size = ctypes.c_uint32(len(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "map info")
    return int.from_bytes(info.raw[8:12], "little"), int.from_bytes(info.raw[12:16], "little")


def _fits(fd: int, count: int, keys: bytes, values: Optional[bytes]) -> bool:
    """Are ``keys`` (and ``values``) ``count`` elements of the map's own sizes, one after
    another, and several (not so for per-CPU values)?"""
    if count < 2:
        return False
    key_size, value_size = _map_sizes(fd)
    return len(keys) == count * key_size and (values is None or len(values) == count * value_size)


def _batch(call, fd: int, count: int, keys: bytes, values: Optional[bytes]) -> int:
    """One BPF_MAP_{UPDATE,DELETE}_BATCH of ``count`` elements (``keys``, ``values``: arrays);
    how many the kernel did before it stopped (all of them, or the index of the one it
    refused: then errno). -1 when the kernel has no batch operation for this map (nothing done)."""
    done = ctypes.c_uint32(count)
    args = (keys,) + ((values,) if values is not None else ())
    ret = call(fd, *args, ctypes.byref(done), None)
    if ret < 0 and done.value == 0 and (-ret if ret != -1 else ctypes.get_errno()) in (
            errno_mod.EINVAL, errno_mod.ENOTSUP, errno_mod.EOPNOTSUPP, 524):   # 524: ENOTSUPP
        return -1
    return done.value


def update_batch(fd: int, count: int, keys: bytes, values: bytes, flags: int = BPF_ANY) -> None:
    """:func:`update` of ``count`` elements given as arrays (``keys``: each key of the map's
    key size one after another, ``values`` likewise), in order: one bpf() call
    (BPF_MAP_UPDATE_BATCH) where the map takes it (a 10,000-rule policy is 20,000 elements
    per version), else one call each. Raises LibbpfError at the first element refused; the
    ones before it are written, as with :func:`update` one by one."""
    done = 0
    if flags == BPF_ANY and _fits(fd, count, keys, values):
        done = max(_batch(lib().bpf_map_update_batch, fd, count, keys, values), 0)
    ks, vs = (len(keys) // count, len(values) // count) if count else (0, 0)
    for i in range(done, count):
        update(fd, keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs], flags)


def delete_batch(fd: int, count: int, keys: bytes) -> None:
    """:func:`delete` of ``count`` keys given as an array (absent ones skipped), one bpf()
    call (BPF_MAP_DELETE_BATCH) where the map takes it, else one call each."""
    ks = len(keys) // count if count else 0
    while count and _fits(fd, count, keys, None):
        done = _batch(lib().bpf_map_delete_batch, fd, count, keys, None)
        if done < 0:
            break
        if done < count:
            delete(fd, keys[done * ks:(done + 1) * ks])   # the one the kernel stopped at: absent or an error
            done += 1
        keys, count = keys[done * ks:], count - done
    for i in range(count):
        delete(fd, keys[i * ks:(i + 1) * ks])


def keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of the map (a snapshot; keys deleted meanwhile may be skipped)."""
    prev, nxt = None, ctypes.create_string_buffer(key_size)
    while True:
        ret = lib().bpf_map_get_next_key(fd, prev, nxt)
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno_mod.ENOENT:
                return
            _check(ret, "map next key")
        yield nxt.raw
        prev = ctypes.create_string_buffer(nxt.raw, key_size)


def make_exactly(fd: int, key_size: int, content: dict) -> None:
    """Write ``content`` ({key: value}) to the map and delete every other key."""
    for key, value in content.items():
        update(fd, key, value)
    for key in list(keys(fd, key_size)):
        if key not in content:
            delete(fd, key)


# --- tc ---------------------------------------------------------------------------

class _TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32),
                ("priority", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


def _hook(ifindex: int, point: int) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point)


def tc_attach(ifindex: int, point: int, prog_fd: int, handle: int = 1, priority: int = 1) -> None:
    """Make sure ``ifindex`` has a clsact qdisc and attach ``prog_fd`` at ``point``
    (BPF_TC_INGRESS/EGRESS) as direct-action filter ``handle``/``priority``,
    replacing what was there in one step."""
    hook = _hook(ifindex, point)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, flags=BPF_TC_F_REPLACE,
                   handle=handle, priority=priority)
    if lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)) == 0:
        return
    ret = lib().bpf_tc_hook_create(ctypes.byref(hook))   # no clsact qdisc yet
    if ret < 0 and -ret != errno_mod.EEXIST:
        _check(ret, f"clsact on ifindex {ifindex}")
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, flags=BPF_TC_F_REPLACE,
                   handle=handle, priority=priority)
    _check(lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
           f"tc attach on ifindex {ifindex}")


def tc_query(ifindex: int, point: int, handle: int = 1, priority: int = 1) -> Optional[int]:
    """Id of the program attached as ``handle``/``priority``, or None."""
    hook = _hook(ifindex, point)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    ret = lib().bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if ret < 0:
        return None
    return opts.prog_id


def tc_detach(ifindex: int, point: int, handle: int = 1, priority: int = 1) -> bool:
    hook = _hook(ifindex, point)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    return lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)) == 0


# --- ring buffer -------------------------------------------------------------------

_SAMPLE_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class RingBuffer:
    """Reads a BPF ring buffer map; ``poll()`` calls ``callback(bytes)`` per record."""

    def __init__(self, map_fd: int, callback: Callable[[bytes], None]):
        def sample(_ctx, data, size):
            try:
                callback(ctypes.string_at(data, size))
            except Exception:  # noqa: BLE001 (a callback must not unwind through C)
                pass
            return 0
        self._cb = _SAMPLE_CB(sample)   # keep a reference: C holds the pointer
        self._rb = _ptr(lib().ring_buffer__new(map_fd, self._cb, None, None), "ring buffer")

    def poll(self, timeout_ms: int) -> int:
        """Records consumed (0 on timeout); EINTR counts as 0."""
        ret = lib().ring_buffer__poll(self._rb, timeout_ms)
        if ret < 0 and -ret == errno_mod.EINTR:
            return 0
        return _check(ret, "ring buffer poll")

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
