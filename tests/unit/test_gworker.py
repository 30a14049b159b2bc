"""plugin.daemon.gworker: clients that hold a request's body back do not stop the daemon
answering (U15-F3). A real gunicorn on a unix socket in a subprocess, two threads."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

SERVER = textwrap.dedent("""
    import sys
    from gunicorn.app.base import BaseApplication
    from plugin.daemon.gworker import ReadLimitedWorker

    ReadLimitedWorker.io_timeout = 1.0

    def app(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    class App(BaseApplication):
        def load_config(self):
            for key, value in {"bind": ["unix:" + sys.argv[1]], "workers": 1, "threads": 2,
                               "worker_class": sys.argv[2], "keepalive": 0,
                               "loglevel": "critical"}.items():
                self.cfg.set(key, value)
        def load(self):
            return app

    App().run()
""")


def _connect(path: str, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _answered_within(path: str, seconds: float) -> bool:
    """True when a whole request gets its response within ``seconds``."""
    sock = _connect(path, time.monotonic() + 10)
    sock.settimeout(seconds)
    try:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        return sock.recv(64).startswith(b"HTTP/1.1 200")
    except TimeoutError:
        return False
    finally:
        sock.close()


@pytest.mark.parametrize("worker, answered", [("plugin.daemon.gworker.ReadLimitedWorker", True),
                                               ("gthread", False)])   # the control: gunicorn's own
def test_clients_holding_their_body_back_do_not_stop_the_daemon(tmp_path, worker, answered):
    path = str(tmp_path / "s.sock")
    server = subprocess.Popen([sys.executable, "-c", SERVER, path, worker],
                              cwd=os.getcwd(), stderr=subprocess.DEVNULL)
    slow = []
    try:
        assert _answered_within(path, 10)        # up, and answering
        for _ in range(4):                       # twice the threads: headers, one byte, then nothing
            sock = _connect(path, time.monotonic() + 5)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            slow.append(sock)
        time.sleep(0.3)                          # the threads have taken them
        assert _answered_within(path, 4) is answered
    finally:
        for sock in slow:
            sock.close()
        server.terminate()
        server.wait(timeout=15)
