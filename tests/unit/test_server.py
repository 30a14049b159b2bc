"""plugin.daemon.server: the worker gives freed heap pages back once requests stop."""
from __future__ import annotations

import threading

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
