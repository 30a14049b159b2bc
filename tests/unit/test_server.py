"""plugin.daemon.server: the one daemon process serves a WSGI app on a root-only unix
socket with a thread pool, and stops cleanly on SIGTERM. A small WSGI app stands in
for the daemon (``serve(settings, make=...)``); the server runs in a child process."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

CHILD = textwrap.dedent("""
    import sys, threading, time
    from plugin.config import Settings
    from plugin.daemon import server

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(float(sys.argv[2]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    server.serve(Settings(socket=sys.argv[1], state_dir="/nonexistent"), make=lambda s: (app, None))
    print("stopped", flush=True)
""")


def get(path: str, route: str, timeout: float = 10.0) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def answers(path: str) -> bool:
    try:
        return get(path, "/up", timeout=1.0).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.fixture
def daemon(tmp_path):
    """(socket path, Popen) of a served stand-in app whose /slow takes 1.5 s."""
    path = str(tmp_path / "run" / "secnet.sock")
    os.makedirs(os.path.dirname(path))
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # a stale socket file, as a killed daemon leaves: replaced
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path, "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not answers(path):
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.05)
        yield path, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_the_socket_is_root_only_and_answers(daemon):
    path, _proc = daemon
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    reply = get(path, "/Plugin.Activate")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"/Plugin.Activate")


def test_a_slow_call_does_not_block_the_others(daemon):
    path, _proc = daemon
    slow: list = []
    caller = threading.Thread(target=lambda: slow.append(get(path, "/slow")))
    caller.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert get(path, "/fast").endswith(b"/fast")
    assert time.monotonic() - started < 1.0   # not after the slow one's 1.5 s
    caller.join(10)
    assert slow and slow[0].endswith(b"/slow")


def test_sigterm_finishes_the_call_in_progress_then_removes_the_socket(daemon):
    path, proc = daemon
    slow: list = []
    caller = threading.Thread(target=lambda: slow.append(get(path, "/slow")))
    caller.start()
    time.sleep(0.3)
    proc.terminate()
    caller.join(10)
    assert slow and slow[0].startswith(b"HTTP/1.1 200") and slow[0].endswith(b"/slow")
    assert proc.wait(10) == 0
    assert proc.stdout.read() == "stopped\n"
    assert not os.path.exists(path)


def test_the_heap_is_trimmed_once_requests_stop():
    from plugin.daemon.server import Trimmer

    calls: list = []
    trimmer = Trimmer(quiet=0.3)
    trimmer._trim = lambda pad: calls.append(time.monotonic())
    trimmer.start()
    app = trimmer.wrap(lambda environ, start_response: [b"ok"])
    started = time.monotonic()
    while time.monotonic() - started < 1.0:   # a request every 0.1 s for 1 s: no trim meanwhile
        assert app({}, None) == [b"ok"]
        time.sleep(0.1)
    assert calls == []
    time.sleep(0.8)
    assert len(calls) == 1 and calls[0] - started >= 1.2   # once, after 0.3 s of quiet
