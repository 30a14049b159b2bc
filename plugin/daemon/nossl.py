"""gunicorn in the master process without OpenSSL.

gunicorn's ``config``, ``sock`` and worker modules ``import ssl`` at the top,
for TLS settings that a daemon on a unix socket never uses (secnet's
``BaseApplication`` sets no ``certfile``, and reads no command line or
``GUNICORN_CMD_ARGS`` that could). Loading ``ssl`` maps libcrypto and runs
OpenSSL's set-up: ~5 MiB of the master's RSS, counted once more in the
worker's. :func:`import_without_ssl` imports gunicorn against a stand-in
``ssl`` that holds only the names gunicorn reads at import; the stand-in
leaves ``sys.modules`` at once, so any later ``import ssl`` gets the real
module. :func:`restore_ssl` (in the worker, which loads OpenSSL anyway for
the Docker client) points gunicorn's modules back at the real ``ssl``: the
worker runs stock gunicorn.
"""
from __future__ import annotations

import importlib
import sys
import types


class _StandInSSLError(OSError):
    """Never raised: there is no TLS in a process holding the stand-in."""


def _stand_in() -> types.ModuleType:
    module = types.ModuleType("ssl", "stand-in for ssl while gunicorn is imported (plugin.daemon.nossl)")
    module.SSLError = _StandInSSLError
    # the stdlib's values: defaults of gunicorn's (unused) TLS settings
    module.PROTOCOL_TLS = module.PROTOCOL_SSLv23 = 2
    module.CERT_NONE = 0
    module.SSL_ERROR_EOF = 8
    module.__secnet_stand_in__ = True
    return module


STAND_IN = _stand_in()
_BOUND: list = []   # names of the modules imported against the stand-in


def import_without_ssl(*names: str) -> list:
    """Import modules ``names`` (gunicorn's) with :data:`STAND_IN` as ``ssl``;
    returns the modules. When ``ssl`` is loaded already, or gunicorn reads a name
    the stand-in lacks (another gunicorn version), they are imported as usual."""
    if "ssl" in sys.modules:
        return [importlib.import_module(n) for n in names]
    before = set(sys.modules)
    sys.modules["ssl"] = STAND_IN
    try:
        modules = [importlib.import_module(n) for n in names]
        _BOUND.extend(sorted(set(sys.modules) - before - {"ssl"}))
        return modules
    except (AttributeError, ImportError):
        for name in set(sys.modules) - before:   # half-imported against the stand-in
            del sys.modules[name]
        sys.modules.pop("ssl", None)
        return [importlib.import_module(n) for n in names]
    finally:
        if sys.modules.get("ssl") is STAND_IN:
            del sys.modules["ssl"]


def restore_ssl() -> int:
    """Import the real ``ssl`` and rebind every global of the modules imported
    against the stand-in that holds it (``ssl``) or its ``SSLError``. Returns how
    many were rebound."""
    import ssl
    rebound = 0
    for name in _BOUND:
        namespace = getattr(sys.modules.get(name), "__dict__", None) or {}
        for key, value in list(namespace.items()):
            if value is STAND_IN:
                namespace[key] = ssl
            elif value is _StandInSSLError:
                namespace[key] = ssl.SSLError
            else:
                continue
            rebound += 1
    return rebound
