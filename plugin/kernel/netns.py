"""Make sockets inside another network namespace (a container's sandbox).

Kernel background. The network namespace is an attribute of each *thread*:
``setns(fd, CLONE_NEWNET)`` moves only the calling thread, and a socket
belongs for good to the namespace it was created in, whichever thread later
reads or writes it. So a short-lived thread enters the namespace, creates
the sockets and ends; the caller then uses them from its own thread, which
never left the daemon's namespace. A thread started later inherits the
namespace of the thread that starts it, never that of an ended one.
Python 3.11 has no ``os.setns``: libc's ``setns`` through ctypes.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def unshare_net() -> None:
    """Move the calling thread into a new, empty network namespace (unshare(2),
    CLONE_NEWNET; needs CAP_SYS_ADMIN). It goes away when nothing uses it any more."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def _on_thread(enter_ns: Callable, fn: Callable, args: tuple, timeout: float, where: str):
    """``fn(*args)`` on a new thread that first calls ``enter_ns()``; its result or exception."""
    outcome: dict = {}

    def target():
        try:
            enter_ns()
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="secnet-netns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer from {where} within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def run_in(path: str, fn: Callable, *args, timeout: float = 5.0):
    """``fn(*args)`` on a new thread inside the namespace at ``path``; its result or exception."""
    return _on_thread(lambda: enter(path), fn, args, timeout, f"inside {path}")


def run_in_new(fn: Callable, timeout: float = 10.0):
    """``fn()`` on a new thread in a network namespace of its own, made for the call
    (nothing it does touches the host's). Raises OSError when it cannot be made."""
    return _on_thread(unshare_net, fn, (), timeout, "a scratch namespace")
