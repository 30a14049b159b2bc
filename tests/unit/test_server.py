"""plugin.daemon.server: the worker gives freed heap pages back once requests stop."""
from __future__ import annotations

import os
import threading
import time

import pytest

from plugin.daemon.server import Trimmer


def test_the_heap_is_trimmed_once_requests_stop():
    """No trim while requests keep coming; one trim after ``quiet`` seconds without one."""
    trimmed = threading.Event()
    calls: list = []
    trimmer = Trimmer(quiet=0.3)
    trimmer._trim = lambda pad: (calls.append(pad), trimmed.set())
    trimmer.start()
    app = trimmer.wrap(lambda environ, start_response: [b"ok"])
    for _ in range(20):                       # back to back: never 0.3 s apart
        assert app({}, None) == [b"ok"]
    assert trimmed.wait(10.0), "no trim after requests stopped"
    assert calls == [0]


def test_a_burst_of_requests_gets_a_full_collection_every_collect_every_requests():
    """While requests keep coming (no quiet, so no trim), the cyclic garbage they leave
    is collected every ``collect_every`` requests, on the trimmer's thread."""
    import gc

    class Cycle:
        def __init__(self):
            self.me = self

    gc.collect()
    trimmer = Trimmer(quiet=5.0, collect_every=50)
    trimmer._trim = lambda pad: None
    trimmer.start()
    gc.disable()   # only the trimmer collects here
    try:
        def app(environ, start_response):
            Cycle()   # garbage only a collection frees
            return [b"ok"]
        wrapped = trimmer.wrap(app)
        for _ in range(200):
            wrapped({}, None)
            time.sleep(0.002)
        deadline = time.monotonic() + 10
        while trimmer.collections < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = sum(type(o) is Cycle for o in gc.get_objects())
    finally:
        gc.enable()
    assert trimmer.collections >= 2 and trimmer.trims == 0
    assert alive < 100, alive   # at most the requests since the last collection (200 without)


def test_collect_every_zero_collects_nothing():
    trimmer = Trimmer(quiet=5.0, collect_every=0)
    trimmer._trim = lambda pad: None
    trimmer.start()
    app = trimmer.wrap(lambda environ, start_response: [b"ok"])
    for _ in range(300):
        app({}, None)
    time.sleep(0.2)
    assert trimmer.collections == 0


def test_the_master_freezes_its_heap_before_it_forks_the_worker():
    """gunicorn's pre_fork hook of secnet's app puts the master's objects in the
    collector's permanent generation (in a child process: pytest's heap stays as is)."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import gc
        from plugin.config import Settings
        from plugin.daemon.server import _Gunicorn
        app = _Gunicorn(Settings.from_env())
        before = gc.get_freeze_count()
        app.cfg.pre_fork(None, None)
        print(before, gc.get_freeze_count() > 1000)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "True"]


def test_the_daemon_closes_every_connection_after_its_response():
    """gunicorn's keep-alive is off for secnet's app: Docker's plugin client retries a call on
    a reused connection that was closed with a body it already drained, which reached the
    driver as an empty Join (plugin.daemon.server.KEEPALIVE). gunicorn answers
    ``Connection: close`` when ``keepalive`` is 0 (gunicorn/workers/gthread.py)."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        from plugin.config import Settings
        from plugin.daemon.server import _Gunicorn
        print(_Gunicorn(Settings.from_env()).cfg.keepalive)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0"]


def _release(held_before: int) -> None:
    from plugin.daemon import server
    while len(server._HELD) > held_before:
        thing = server._HELD.pop()
        thing.close() if hasattr(thing, "close") else os.close(thing)


def test_a_second_daemon_in_the_namespace_is_refused_even_with_another_state_dir(tmp_path):
    """U24-F5: the lock was per state directory only; a second daemon with another one took
    the socket and removed the first one's networks as orphans."""
    import uuid
    from plugin.daemon import server
    name, before = f"secnet-test-{uuid.uuid4().hex}", len(server._HELD)
    try:
        server.hold_instance_lock(str(tmp_path / "a"), name=name)
        with pytest.raises(SystemExit, match="another secnet daemon runs in this network namespace"):
            server.hold_instance_lock(str(tmp_path / "b"), wait=0.3, name=name)
    finally:
        _release(before)
    server.hold_instance_lock(str(tmp_path / "b"), wait=0.3, name=name)   # free again once the first let go
    _release(before)


def test_a_state_dir_that_cannot_be_made_is_one_line(tmp_path):
    from plugin.daemon import server
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as err:
        server.hold_instance_lock(str(tmp_path / "file" / "state"), wait=0.1, name="secnet-test-unused")
    assert str(err.value).startswith("secnet-plugin: cannot use the state directory ") and "\n" not in str(err.value)


def test_a_state_database_that_cannot_be_read_stops_the_worker_with_one_line(tmp_path, caplog):
    """U24-F3: garbage in state.db stopped the daemon with a traceback."""
    import logging
    from plugin.config import Settings
    from plugin.daemon import server
    (tmp_path / "state.db").write_bytes(b"this is not an SQLite database" * 100)
    app = server._Gunicorn(Settings.from_env({"SECNET_STATE_DIR": str(tmp_path), "SECNET_DNS": "0"}))
    with caplog.at_level(logging.ERROR, logger="secnet"), pytest.raises(SystemExit) as stop:
        app.load()
    assert stop.value.code == server.WORKER_BOOT_ERROR
    (line,) = [r.getMessage() for r in caplog.records if r.name == "secnet"]
    assert line.startswith(f"cannot read the state database in {tmp_path}: file is not a database")


def _allocator_of(env: dict) -> tuple:
    """(PYTHONMALLOC, pymalloc in use) of a child process that calls with_system_malloc()."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import os, sys
        from plugin.daemon.server import with_system_malloc
        with_system_malloc()
        sys._debugmallocstats()   # pymalloc's arena lines only when pymalloc serves objects
        print(os.environ.get("PYTHONMALLOC"), os.getpid())
    """)
    res = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    out, err = res.communicate(timeout=60)
    assert res.returncode == 0, err
    name, pid = out.split()
    assert int(pid) == res.pid   # executed again in place: the same process
    return name, "# arenas allocated current" in err


def test_the_daemon_runs_on_glibc_malloc_unless_told_otherwise():
    """Issue 12: pymalloc keeps the free pools of arenas a few survivors pin, so after a big
    policy edit the daemon never came back near its start; on glibc's malloc the Trimmer's
    malloc_trim gives them back. The daemon executes itself again with PYTHONMALLOC=malloc;
    an operator's PYTHONMALLOC stands."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    assert _allocator_of(env) == ("malloc", False)
    assert _allocator_of(dict(env, PYTHONMALLOC="pymalloc")) == ("pymalloc", True)


def test_a_daemon_that_cannot_execute_itself_again_goes_on(capsys):
    """The exec failing (a vanished interpreter) costs the allocator, not the daemon: one line."""
    from plugin.daemon import server

    def fail(*_args):
        raise FileNotFoundError(2, "No such file or directory")
    server.with_system_malloc(environ={}, execve=fail)
    assert capsys.readouterr().err == ("secnet-plugin: cannot start again on glibc's malloc (No such file or "
                                       "directory); going on with pymalloc\n")
