"""gunicorn in the master process without OpenSSL, ``importlib.metadata``,
``email.utils``, ``logging.config``, ``argparse`` and ``concurrent.futures``.

The master only forks and watches the worker, but importing gunicorn loads
two things it never uses there: ``ssl`` (``gunicorn.config``, ``sock`` and
the worker modules import it at the top for TLS settings that a daemon on a
unix socket never has: secnet's ``BaseApplication`` sets no ``certfile`` and
reads no command line or ``GUNICORN_CMD_ARGS`` that could), which maps
libcrypto and runs OpenSSL's set-up, ~4 MiB; and ``importlib.metadata``
(``gunicorn.util``, for ``egg:`` entry points), ~2.5 MiB with zipfile, csv
and email. Both count in the master's RSS and once more in the worker's.

:func:`import_lean` imports gunicorn with a stand-in for each in
``sys.modules``: for ``ssl`` a module holding only the names gunicorn reads
at import; for ``importlib.metadata`` one that imports the real module at its
first use; the same for ``email.utils`` (gunicorn's HTTP date, worker only,
1.3 MiB with its email modules) and, for ``logging.config`` (gunicorn's logger
imports ``dictConfig``/``fileConfig`` for log configuration files secnet never
sets; 1.7 MiB with ``logging.handlers``), two functions that import it when
called; ``argparse`` (gunicorn's command line parser, which ``BaseApplication``
never builds) and ``concurrent.futures`` (the gthread worker's pool, worker only),
~0.5 MiB together, each a module that imports the real one at first use. The
stand-ins leave ``sys.modules`` at once, so any later import gets the real
module. :func:`restore_in_worker` (in the worker, which loads them anyway: the
Docker client, Flask) points gunicorn's modules back at the real
``importlib.metadata``, ``email.utils`` and ``concurrent.futures``; the worker has no TLS either and
keeps the ``ssl`` stand-in (it imports without OpenSSL:
``plugin.kernel.lightimport.without_openssl``).
"""
from __future__ import annotations

import importlib
import sys
import types


class _StandInSSLError(OSError):
    """Never raised: there is no TLS in a process holding the stand-in."""


def _ssl_stand_in() -> types.ModuleType:
    module = types.ModuleType("ssl", "stand-in for ssl while gunicorn is imported (plugin.daemon.leanmaster)")
    module.SSLError = _StandInSSLError
    # the stdlib's values: defaults of gunicorn's (unused) TLS settings
    module.PROTOCOL_TLS = module.PROTOCOL_SSLv23 = 2
    module.CERT_NONE = 0
    module.SSL_ERROR_EOF = 8
    return module


class _Deferred(types.ModuleType):
    """Stands for the module of the same name until one of its attributes is
    used; then imports the real module and answers from it."""

    def __getattr__(self, attr: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def _real_logging_config():
    if isinstance(sys.modules.get("logging.config"), _LoggingConfig):
        del sys.modules["logging.config"]
    return importlib.import_module("logging.config")


class _LoggingConfig(types.ModuleType):
    """``logging.config`` for ``gunicorn.glogging``'s ``from logging.config import
    dictConfig, fileConfig``: both import the real module when called (secnet sets
    neither ``logconfig`` nor ``logconfig_dict``: never)."""

    @staticmethod
    def dictConfig(*args, **kwargs):
        return _real_logging_config().dictConfig(*args, **kwargs)

    @staticmethod
    def fileConfig(*args, **kwargs):
        return _real_logging_config().fileConfig(*args, **kwargs)


SSL = _ssl_stand_in()
METADATA = _Deferred("importlib.metadata", "imported at first use (plugin.daemon.leanmaster)")
EMAIL_UTILS = _Deferred("email.utils", "imported at first use (plugin.daemon.leanmaster)")
LOGGING_CONFIG = _LoggingConfig("logging.config", "imported at first call (plugin.daemon.leanmaster)")
ARGPARSE = _Deferred("argparse", "imported at first use (plugin.daemon.leanmaster)")
FUTURES = _Deferred("concurrent.futures", "imported at first use (plugin.daemon.leanmaster)")
_STAND_INS = {"ssl": SSL, "importlib.metadata": METADATA, "email.utils": EMAIL_UTILS,
              "logging.config": LOGGING_CONFIG, "argparse": ARGPARSE, "concurrent.futures": FUTURES}
_BOUND: list = []   # names of the modules imported against the stand-ins


def import_lean(*names: str) -> list:
    """Import modules ``names`` (gunicorn's) with the stand-ins in ``sys.modules``
    for those of ``ssl`` and ``importlib.metadata`` not loaded yet; returns the
    modules. When gunicorn reads a name the ``ssl`` stand-in lacks (another
    gunicorn version), they are imported again as usual."""
    missing = {k: v for k, v in _STAND_INS.items() if k not in sys.modules}
    importlib.import_module("email")   # ``import email.utils`` binds the real package
    before = set(sys.modules)
    sys.modules.update(missing)
    try:
        modules = [importlib.import_module(n) for n in names]
        _BOUND.extend(sorted(set(sys.modules) - before - set(missing)))
        return modules
    except (AttributeError, ImportError):
        for name in set(sys.modules) - before:   # half-imported against the stand-ins
            del sys.modules[name]
        return [importlib.import_module(n) for n in names]
    finally:
        for name, stand_in in missing.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


def restore_in_worker() -> int:
    """Import the real ``importlib.metadata``, ``email.utils`` (gunicorn's
    ``http_date``, each response's Date) and ``concurrent.futures`` (the gthread
    worker's pool) and rebind every global of the modules imported against the
    stand-ins that holds one of them. Returns how many were rebound. The ``ssl``
    stand-in stays, as in the master: the worker has no TLS either (its socket is a
    unix socket; gunicorn reads ``ssl`` only for a ``certfile``, and catches the
    stand-in ``SSLError``, never raised); so do ``logging.config``'s and
    ``argparse``'s: each imports the real module if ever used."""
    import concurrent.futures as futures
    import email.utils as email_utils
    import importlib.metadata as metadata
    pairs = ((METADATA, metadata), (EMAIL_UTILS, email_utils), (FUTURES, futures))
    rebound = 0
    for name in _BOUND:
        namespace = getattr(sys.modules.get(name), "__dict__", None) or {}
        for key, value in list(namespace.items()):
            for stand_in, target in pairs:
                if value is stand_in:
                    namespace[key] = target
                    rebound += 1
    return rebound
