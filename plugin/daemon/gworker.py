"""gunicorn's threaded worker with a time limit on each read and write of a connection.

gunicorn's ``gthread`` worker keeps a new connection in its poller until it is readable,
then hands it to one of its threads, which reads the request line, headers and body
with blocking reads and no time limit (gunicorn 23, ``gunicorn/workers/gthread.py``:
``TConn.init`` sets the socket blocking; the worker's ``timeout`` is a heartbeat of the
process, not of a request). A client that sends its headers and then holds the body
back keeps a thread; eight such clients (secnet runs 8 threads) stopped the daemon
answering the engine at all (U15-F3), so ``docker run`` and ``docker network rm`` on
secnet networks would hang. Here a socket operation that waits longer than
:attr:`ReadLimitedWorker.io_timeout` seconds raises ``TimeoutError`` (an ``OSError``), on
which gunicorn closes the connection and logs it; the thread is free again. The limit
is per operation, not per request: a handler may work as long as it needs, and a
``secnet log --follow`` stream idles without limit between lines.
"""
from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class ReadLimitedWorker(ThreadWorker):
    """``gthread`` with a socket timeout of :attr:`io_timeout` seconds on every
    connection a thread serves (float, seconds)."""

    io_timeout = 10.0

    def handle(self, conn):
        conn.sock.settimeout(self.io_timeout)
        return super().handle(conn)
