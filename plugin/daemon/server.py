"""secnet-plugin: gunicorn serving the Flask app on a root-only unix socket.

One worker process owns all kernel state (threads give concurrency), so the
driver, its netlink socket and the Docker watcher are built inside the worker
after the fork, never at import time.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import logging
import os
import socket
import sys
import threading
import time

from plugin.config import DEFAULT_DOCKER_HOST, Settings
from plugin.daemon import leanmaster

# the master runs gunicorn without OpenSSL, importlib.metadata, email.utils, logging.config,
# argparse and concurrent.futures; the worker gets importlib.metadata, email.utils and
# concurrent.futures back in load(), and imports without OpenSSL too (build)
BaseApplication = leanmaster.import_lean("gunicorn.app.base", "gunicorn.workers.gthread",
                                         "gunicorn.glogging")[0].BaseApplication

log = logging.getLogger("secnet")
_HELD: list = []  # the instance locks (the state directory's descriptor, the namespace's socket), kept open


def build(settings: Settings):
    """Build the daemon (plugin.daemon.wiring), restore its state, start it. Returns (app, daemon).

    Its modules are imported without OpenSSL (lightimport.without_openssl: ~5 MiB of
    RSS): the worker serves a unix socket, and the Docker SDK is imported here too,
    before the label watcher's thread would, so that it talks plain HTTP to the
    engine's socket; only a ``DOCKER_HOST=https://...`` engine gets its SDK with TLS.
    """
    from plugin.kernel import lightimport

    with lightimport.without_openssl():
        from plugin.daemon import wiring
        from plugin.daemon.app import create_app
        if not (settings.docker_host or DEFAULT_DOCKER_HOST).startswith("https:"):
            lightimport.import_docker()
    daemon = wiring.build(settings)
    wiring.start(daemon)
    return create_app(daemon.driver, daemon.api), daemon


WORKER_BOOT_ERROR = 3   # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR: the master halts instead of forking again
NAMESPACE_LOCK = "secnet-plugin.daemon"   # an abstract unix socket name: one per network namespace


def hold_instance_lock(state_dir: str, wait: float = 15.0, name: str = NAMESPACE_LOCK) -> None:
    """One daemon per state directory and per network namespace: two would each remove
    the other's objects (a second daemon with another ``SECNET_STATE_DIR`` took the
    socket and deleted the first one's bridges as orphans, U24-F5).

    The namespace's lock is the abstract unix socket ``name`` (its names are per network
    namespace and go with the process that bound it: unix(7)); the state directory's,
    ``daemon.lock`` in it. Both are inherited by the worker and held for the daemon's
    whole life; a daemon that is shutting down gets ``wait`` seconds to let go. Raises
    SystemExit with one line when another daemon holds either, or the directory cannot
    be used.
    """
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(state_dir, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SystemExit(f"secnet-plugin: cannot use the state directory {state_dir}: "
                         f"{exc.strerror or exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise SystemExit(f"secnet-plugin: another daemon uses {state_dir}; stop it first") from None
            time.sleep(0.2)
    while True:
        try:
            sock.bind("\0" + name)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if time.monotonic() > deadline:
                os.close(fd)
                sock.close()
                raise SystemExit("secnet-plugin: another secnet daemon runs in this network namespace "
                                 "(with another state directory); two would remove each other's "
                                 "networks: stop it first") from None
            time.sleep(0.2)
    _HELD.extend((fd, sock))


class Trimmer:
    """Gives the heap's free pages back to the kernel (glibc ``malloc_trim``) once
    requests have stopped for ``quiet`` seconds.

    A policy edit of 10,000 rules or 1,000 leaves free tens of MiB in small blocks
    spread over the heap; glibc keeps those pages (only a free top of the heap is
    returned by itself), so without this RSS stays at its high-water mark. A trim
    takes a few ms, on this thread, never on a request's.

    While requests keep coming, it also runs a full collection of the cyclic garbage
    every ``collect_every`` requests, on this thread. Each pyroute2 0.9 request leaves
    ~240 objects in reference cycles (its parsed reply, its request processor); those of
    a burst of joins outlive the young collections and wait for a full one, which
    CPython starts only once they pass 25 % of the old generation: 1,000 joins grew the
    heap by up to ~5 MiB of such garbage, spread among live blocks afterwards and never
    returned (bench/results/2026-12-02-rss5.md). ``collect_every=0``: none.
    """

    def __init__(self, quiet: float = 1.0, collect_every: int = 200):
        self.quiet = quiet
        self.collect_every = collect_every
        self.served = 0          # requests ended so far
        self.collections = 0
        self._collected_at = 0
        self._wake = threading.Event()
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):   # not glibc: nothing to give back this way
            self._trim = None
        self.trims = 0

    def start(self) -> "Trimmer":
        if self._trim is not None:
            threading.Thread(target=self._run, name="secnet-trim", daemon=True).start()
        return self

    def soon(self) -> None:
        """A request ended: trim after the next ``quiet`` seconds without one."""
        self.served += 1
        self._wake.set()

    def _collect_if_due(self) -> None:
        if self.collect_every and self.served - self._collected_at >= self.collect_every:
            self._collected_at = self.served
            gc.collect()
            self.collections += 1

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._collect_if_due()
            while self._wake.wait(self.quiet):   # more requests came: wait for quiet
                self._wake.clear()
                self._collect_if_due()
            self._trim(0)
            self.trims += 1

    def wrap(self, app):
        """``app`` calling :meth:`soon` after each request."""
        def trimmed(environ, start_response):
            try:
                return app(environ, start_response)
            finally:
                self.soon()
        return trimmed


# No keep-alive: every response says ``Connection: close``. Docker's plugin client
# (moby pkg/plugins/client.go, callWithRetry) keeps idle connections without a limit and,
# when a reused one turns out closed (gunicorn's default closes idle ones after 2 s, and a
# daemon restart closes all), retries the call with the request body it already drained:
# the driver gets an empty Join ("missing field NetworkID", seen in CI under load) and the
# `docker run` fails. A fresh unix-socket connection per call costs microseconds.
KEEPALIVE = 0


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        s = self.settings
        for key, value in {
            "bind": [f"unix:{s.socket}"], "workers": 1, "worker_class": "plugin.daemon.gworker.ReadLimitedWorker", "threads": 8,
            "umask": 0o077, "timeout": 0, "graceful_timeout": 10, "loglevel": s.log_level,
            "keepalive": KEEPALIVE,
            "accesslog": "-" if s.log_level == "debug" else None, "errorlog": "-",
            "proc_name": "secnet-plugin", "worker_exit": _close_state, "pre_fork": _freeze_heap,
        }.items():
            self.cfg.set(key, value)

    def load(self):
        """The worker's app. A state database that cannot be read stops the daemon with
        one line (gunicorn's WORKER_BOOT_ERROR, 3: the master does not retry), not a
        traceback (U24-F3); the kernel is left as it is."""
        import sqlite3   # here, not at the top: the master never opens the state (libsqlite3: 1.1 MiB of its RSS)

        leanmaster.restore_in_worker()
        try:
            app, self.daemon = build(self.settings)
        except sqlite3.DatabaseError as exc:
            log.error("cannot read the state database in %s: %s; the daemon stops and the kernel is left "
                      "as it is (moved aside, the next start begins empty and removes every secnet "
                      "network's kernel objects)", self.settings.state_dir, exc)
            sys.exit(WORKER_BOOT_ERROR)
        return Trimmer().start().wrap(app)


def _freeze_heap(_arbiter, _worker) -> None:
    """gunicorn's ``pre_fork`` hook, run in the master before it forks the worker:
    every object so far goes to the collector's permanent generation (``gc.freeze``).
    The worker's collections then never write into them (a collection writes into
    the header of each object it examines), so the pages the worker inherits stay
    shared with the master instead of being copied one by one (Python docs, gc.freeze:
    "avoid copy-on-write in child processes"). The objects are the master's: they
    live as long as it does anyway."""
    gc.freeze()


def _close_state(_arbiter, worker) -> None:
    """gunicorn's ``worker_exit`` hook, run in the worker as it ends (SIGTERM, not
    SIGKILL): the state store writes its journaled rule edits into the documents
    (:meth:`plugin.driver.state.State.close`), so that an older daemon started on
    the directory finds every rule."""
    daemon = getattr(worker.app, "daemon", None)
    if daemon is None:
        return
    try:
        daemon.state.close()
    except Exception:   # never fail an exit; the journal is replayed at the next start
        log.exception("cannot write the state's journaled rule edits at exit")


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def limit_malloc_arenas(arenas: int = 2, mmap_threshold: int = 128 << 10) -> None:
    """glibc gives each thread its own malloc arena; a few threads that mostly
    sleep don't need that, and the arenas' pages count against the daemon's RSS.

    glibc also raises its mmap threshold each time a large block is freed (up
    to 32 MiB), after which the large, short-lived buffers of a 10,000-rule
    edit (request body, rule lists, the JSON of the state row) come from the
    heap and stay in RSS. A fixed threshold (and trim threshold) keeps them
    in mmaps that are returned when freed (in-process, 1,000 endpoints and
    10,000 rules: 7 MiB less RSS, 5 MiB less after the network is removed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)           # M_ARENA_MAX
        libc.mallopt(-3, mmap_threshold)   # M_MMAP_THRESHOLD (fixed: no dynamic raise)
        libc.mallopt(-1, mmap_threshold)   # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def with_system_malloc(environ=os.environ, execve=os.execve) -> None:
    """Runs the rest of this process on glibc's malloc instead of pymalloc: unless
    ``PYTHONMALLOC`` is set already (any value: the operator's choice stands), the
    interpreter is executed again, same process and arguments (``sys.orig_argv``),
    with ``PYTHONMALLOC=malloc``. The allocator is chosen when the interpreter starts
    and cannot change afterwards, hence the exec; it is the first thing ``main`` does.

    Why (issue 12, bench/results/2026-12-01-rss4.md): pymalloc gives a 1 MiB arena back
    only when every block in it is free. A 50,000-rule ``policy set`` spreads its
    short-lived objects over tens of new arenas; afterwards a few scattered surviving
    blocks (no one cache: dicts, lists, ints, small strings of every part) pin them,
    and their free 16 KiB pools stay resident for good. glibc's ``malloc_trim``, which
    the :class:`Trimmer` calls once requests stop, gives free pages back wherever they
    lie. When the exec fails the daemon goes on, on pymalloc, after one line on stderr."""
    if "PYTHONMALLOC" in environ or not sys.executable:
        return
    try:
        execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], dict(environ, PYTHONMALLOC="malloc"))
    except OSError as exc:
        print(f"secnet-plugin: cannot start again on glibc's malloc ({exc.strerror or exc}); "
              "going on with pymalloc", file=sys.stderr)


def main(argv=None) -> int:
    with_system_malloc()
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"secnet-plugin: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("secnet-plugin: must run as root (it manages bridges, veths and nftables)", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    limit_malloc_arenas()
    try:
        hold_instance_lock(settings.state_dir)  # inherited by the worker
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(settings.socket) or ".", exist_ok=True)
    log.info("secnet-plugin listening on %s, state in %s", settings.socket, settings.state_dir)
    _Gunicorn(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
