"""Running nft: through libnftables in-process, or the `nft` binary.

Every secnet change is one nft script applied as one kernel transaction.
libnftables (the library the `nft` command is built on, shipped with the
nftables package) does that in-process in about a millisecond; a fork and
exec of `nft` costs several. The library is used when it can be loaded and
no other binary was asked for; otherwise the command runs.

A runner keeps one library context, made by its first command in the calling
thread's network namespace (its netlink socket lives there: the kernel tier
calls a runner on a thread inside a throwaway namespace); a command from a
thread in another namespace gets a context of its own, freed after it.
The kept context is never closed between commands because closing an
nf_tables socket waits for the last commit's cleanup: its release runs
``nft_rcv_nl_event`` (net/netfilter/nf_tables_api.c), which flushes the pending
transaction-destroy work -- an RCU grace period, ``synchronize_rcu`` in
``nf_tables_trans_destroy_work`` -- holding the namespace's commit mutex. Seen here
(perf sched_switch stacks: ``__flush_work < nft_rcv_nl_event < netlink_release``;
strace: ``close`` of the socket after a network's tables 10-22 ms), it was a third
of CreateNetwork's table write. A context also keeps a cache of the ruleset it
last read (a listing of a network with 10,000 rules: ~19 MiB); it is released
after every command (:meth:`_Lib.run`), and a context whose output buffer grew
past ``KEPT_OUTPUT_MAX`` (a large listing: it keeps its size) is freed, so no
more is held between commands than when each context was freed. A child `nft`
forked from the calling thread runs in its namespace too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import threading
import weakref

from plugin.kernel import netns

TABLE_PREFIX = "secnet_"
_JSON_OUTPUT = 1 << 4  # NFT_CTX_OUTPUT_JSON
_STATELESS = 1 << 2    # NFT_CTX_OUTPUT_STATELESS: no counter values
_TERSE = 1 << 11       # NFT_CTX_OUTPUT_TERSE: no set elements
IN_PROCESS_MAX = 256 * 1024  # bytes of script run through libnftables
KEPT_OUTPUT_MAX = 64 * 1024  # bytes of output after which the context goes (its buffer keeps that size)


class NftError(RuntimeError):
    pass


def in_scratch_namespace(fn, timeout: float = 10.0):
    """``fn()`` on a thread in a network namespace of its own, made for the call and
    gone after it (nothing it does touches the host's tables). Raises OSError when
    the namespace cannot be made (no CAP_SYS_ADMIN), or what ``fn`` raised."""
    return netns.run_in_new(fn, timeout)


def _thread_netns() -> tuple:
    """(device, inode) of the calling thread's network namespace."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


class _Lib:
    """libnftables: one kept context (the namespace of its first command), behind one lock."""

    def __init__(self):
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        lib = ctypes.CDLL(name)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).restype = ctypes.c_char_p
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        lib.nft_ctx_free(self._ctx(0))  # the library works here (OSError if not)
        self.lock = threading.Lock()
        self._kept = [None, None]   # [context, its namespace]; freed by close() or at collection
        self._finalizer = weakref.finalize(self, _free_kept, lib, self._kept)

    def _ctx(self, flags: int):
        ctx = self.lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self.lib.nft_ctx_buffer_output(ctx)
        self.lib.nft_ctx_buffer_error(ctx)
        self.lib.nft_ctx_output_set_flags(ctx, flags)
        return ctx

    def run(self, script: str, flags: int = 0):
        """``(rc, output, errors)`` of ``script``, on the kept context when the calling thread
        is in its namespace (made now if there is none), else on one made and freed here."""
        with self.lock:
            here = _thread_netns()
            if self._kept[0] is None:
                self._kept[:] = [self._ctx(0), here]
            kept = self._kept[1] == here
            ctx, rc = self._kept[0] if kept else self._ctx(0), -1
            try:
                self.lib.nft_ctx_output_set_flags(ctx, flags)
                rc = self.lib.nft_run_cmd_from_buffer(ctx, script.encode())
                out = (self.lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
                err = (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            finally:
                if not kept:
                    self.lib.nft_ctx_free(ctx)
                elif rc != 0 or len(out) > KEPT_OUTPUT_MAX:   # a failure's state, a large output
                    _free_kept(self.lib, self._kept)         # buffer: gone with it, a new one next time
                else:
                    self._release_cache(ctx)
        return rc, out, err

    def _release_cache(self, ctx) -> None:
        """Drop the ruleset cache ``ctx`` keeps after a command: libnftables releases it at
        the end of every dry-run command (``nft_run_cmd_from_buffer``: ``if (rc ||
        nft->check) nft_cache_release``), and an empty one sends nothing (~40 us here)."""
        self.lib.nft_ctx_set_dry_run(ctx, True)
        try:
            self.lib.nft_run_cmd_from_buffer(ctx, b"")
        finally:
            self.lib.nft_ctx_set_dry_run(ctx, False)

    def close(self) -> None:
        """Free the kept context (its socket, and the namespace it holds); a later command
        makes another."""
        with self.lock:
            _free_kept(self.lib, self._kept)


def _free_kept(lib, kept: list) -> None:
    ctx, kept[:] = kept[0], [None, None]
    if ctx is not None:
        lib.nft_ctx_free(ctx)


class NftRunner:
    """Runs nft scripts; each ``apply`` is one kernel transaction."""

    def __init__(self, binary: str = "nft"):
        self.binary = binary
        self._lib_made = binary != "nft"
        self._lib_obj = None
        self._lock = threading.Lock()

    @property
    def _lib(self):
        with self._lock:
            if not self._lib_made:
                self._lib_made = True
                try:
                    self._lib_obj = _Lib()
                except OSError:
                    self._lib_obj = None
            return self._lib_obj

    def _run(self, script: str, as_json: bool = False, flags: int = 0):
        # Small scripts (joins, leaves) in-process. A whole-network rebuild of a
        # large policy runs in a child `nft`: parsing tens of thousands of rules
        # in-process leaves the daemon's heap at its high-water mark for good.
        lib = self._lib
        if lib is not None and (as_json or len(script) <= IN_PROCESS_MAX):
            return lib.run(script, (_JSON_OUTPUT | flags) if as_json else 0)
        # the command prints JSON for a list given as arguments, not read from -f
        opts = ["-j"] + (["-t"] if flags & _TERSE else []) + (["-s"] if flags & _STATELESS else [])
        argv = [self.binary, *opts, *script.split()] if as_json else [self.binary, "-f", "-"]
        res = subprocess.run(argv, input=None if as_json else script, capture_output=True,
                             text=True, check=False)
        return res.returncode, res.stdout, res.stderr

    def close(self) -> None:
        """Free the library's kept context (a runner of a throwaway namespace must: its
        socket keeps the namespace). The runner stays usable."""
        with self._lock:
            lib = self._lib_obj
        if lib is not None:
            lib.close()

    def apply(self, script: str) -> None:
        if not script.strip():
            return
        rc, _out, err = self._run(script)
        if rc != 0:
            raise NftError(f"nft failed: {err.strip()[:2000]}")

    def list_json(self, *what: str, terse: bool = False, stateless: bool = False) -> dict:
        """``nft -j list WHAT`` as a dict; ``terse``: without set elements;
        ``stateless``: without counter values. Raises NftError."""
        flags = (_TERSE if terse else 0) | (_STATELESS if stateless else 0)
        rc, out, err = self._run("list " + " ".join(what) + "\n", as_json=True, flags=flags)
        if rc != 0:
            raise NftError(f"nft list {' '.join(what)} failed: {err.strip()}")
        return json.loads(out or "{}")

    def tables(self) -> list:
        """(family, name) of every secnet table in the kernel."""
        data = self.list_json("tables")
        return [(o["table"]["family"], o["table"]["name"]) for o in data.get("nftables", [])
                if "table" in o and o["table"]["name"].startswith(TABLE_PREFIX)]
