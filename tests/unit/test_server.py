"""plugin.daemon.server: the worker gives freed heap pages back once requests stop."""
from __future__ import annotations

import os
import threading

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
