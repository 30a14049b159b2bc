"""Import a package's submodules without its eager ``__init__``.

pyroute2 0.9's ``__init__`` imports every module it has (NDB, IPDB, nl80211,
plan9, wireguard, ...): ~12.7 MiB of RSS in the daemon's worker, of which
``IPRoute`` and ``Conntrack`` need ~6.6. :func:`defer_package_init` registers
the package without running its ``__init__``, so ``import
pyroute2.iproute.linux`` loads only what that module imports. Nothing is
lost: the first use of a name the ``__init__`` defines (``from pyroute2 import
NDB``, ``pyroute2.__version__``) runs the ``__init__`` then (PEP 562 module
``__getattr__``).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import threading
import types

_LOCK = threading.Lock()


def defer_package_init(name: str) -> bool:
    """Register top-level package ``name`` in ``sys.modules`` with its ``__init__``
    not yet run. True if done; False when the package is already imported or is
    not an installed package (then nothing changes)."""
    with _LOCK:
        if name in sys.modules:
            return False
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None or spec.loader is None:
            return False
        module = importlib.util.module_from_spec(spec)
        module.__getattr__ = _loader_of(name, module, spec)
        sys.modules[name] = module
        return True


def _loader_of(name: str, module, spec):
    done = []

    def __getattr__(attr: str):
        """A submodule ``name.attr`` is imported by itself; any other name runs the
        package's ``__init__`` (once) and is looked up again."""
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        with _LOCK:
            if not done:
                done.append(True)
                del module.__getattr__
                spec.loader.exec_module(module)
        return object.__getattribute__(module, attr)

    return __getattr__


class _OnFirstUse(types.ModuleType):
    """Stands for module ``__name__`` (only in the modules imported while it was in
    ``sys.modules``): any attribute not set on it imports the real module and is
    read from there."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):   # the import system's questions (``__path__``, ...)
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        try:
            real = importlib.import_module(self.__name__)
        except ImportError:
            # a library read something at import that the stand-in does not hold (a
            # newer version than the one :func:`import_deferring`'s callers know), inside
            # :func:`without_openssl`: give up the saving rather than the import
            _unblock_openssl()
            real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def import_deferring(name: str, deferred: str, **known) -> types.ModuleType:
    """Import module ``name`` with installed module ``deferred`` standing in as an
    :class:`_OnFirstUse` that holds the attributes ``known`` (what ``name`` reads at
    import); the real ``deferred`` loads at the first use of any other attribute.
    The stand-in leaves ``sys.modules`` at once: a later ``import deferred`` gets the
    real module. When ``deferred`` is imported already or not installed, a plain
    import. A module blocked by :func:`without_openssl` (``None`` in ``sys.modules``)
    gets the stand-in too, and is blocked again after."""
    with _LOCK:
        blocked = deferred in sys.modules and sys.modules[deferred] is None
        if name in sys.modules or (deferred in sys.modules and not blocked) \
                or (not blocked and importlib.util.find_spec(deferred) is None):
            return importlib.import_module(name)
        stand_in = _OnFirstUse(deferred, f"imported at first use (plugin.kernel.lightimport, for {name})")
        stand_in.__dict__.update(known)
        sys.modules[deferred] = stand_in
        try:
            return importlib.import_module(name)
        finally:
            if sys.modules.get(deferred) is stand_in:
                if blocked:
                    sys.modules[deferred] = None
                else:
                    del sys.modules[deferred]


class _MockLater:
    """pyroute2's ``NotLocal.msg_queue``, a ``unittest.mock.Mock()`` made at import for
    its synchronous ``IPRSocket``: the real Mock is made (and unittest.mock imported)
    at the first use of any attribute; every use goes to that one Mock."""

    def __init__(self):
        object.__setattr__(self, "_mock", None)

    def _real(self):
        if self._mock is None:
            from unittest import mock
            object.__setattr__(self, "_mock", mock.Mock())
        return self._mock

    def __getattr__(self, attr: str):
        return getattr(self._real(), attr)

    def __setattr__(self, attr: str, value) -> None:
        setattr(self._real(), attr, value)

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)


def import_iproute() -> types.ModuleType:
    """``pyroute2.iproute.linux`` (IPRoute) without ``ssl`` and ``unittest.mock``.

    pyroute2 0.9.7 imports ``ssl`` at the top of ``netlink/rtnl/probe_msg.py`` for
    its TLS probe of a remote host (``probe_ssl``, never called by secnet), which
    maps OpenSSL's libcrypto (see :func:`without_openssl`); and ``unittest.mock``
    (with the unittest package: 0.8 MiB of RSS) in ``netlink/rtnl/iprsocket.py`` for
    its netlink mock (``config.mock_netlink``) and one ``Mock()`` made at import
    (:class:`_MockLater`). Both stand in as :class:`_OnFirstUse` while those modules
    load: the real one is imported if pyroute2 ever uses it."""
    import_deferring("pyroute2.netlink.rtnl.probe_msg", "ssl")
    mock = _OnFirstUse("unittest.mock", "imported at first use (plugin.kernel.lightimport, for pyroute2)")
    mock.Mock = _MockLater
    # iprsocket is imported by way of linux (they import each other)
    return import_deferring("pyroute2.iproute.linux", "unittest", mock=mock)


class _TLSVersion:
    """Stands for ``ssl.TLSVersion`` in prometheus-client's annotations."""


def import_prometheus() -> types.ModuleType:
    """``prometheus_client`` without ``ssl``: its ``exposition`` module imports it at
    the top for a metrics server with TLS (``certfile``, never given by secnet), which
    maps OpenSSL's libcrypto at the daemon's first scrape (see :func:`without_openssl`).
    It stands in as an :class:`_OnFirstUse` holding what ``exposition`` reads at import
    (prometheus-client 0.2x: ``TLSVersion`` and ``SSLContext`` in annotations,
    ``PROTOCOL_TLS_SERVER`` and ``PROTOCOL_TLS_CLIENT`` (17 and 16, the stdlib's) as
    defaults); the real ``ssl`` is imported if a TLS server or client is ever made."""
    return import_deferring("prometheus_client", "ssl", TLSVersion=_TLSVersion, SSLContext=object,
                            PROTOCOL_TLS_SERVER=17, PROTOCOL_TLS_CLIENT=16)


OPENSSL_MODULES = ("ssl", "_ssl", "_hashlib")


def _unblock_openssl() -> None:
    """Undo :func:`without_openssl`'s blocks (the ``None`` entries) at once."""
    for name in OPENSSL_MODULES:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
_HTTPS_LATER = ("http.client", "urllib.request")


@contextlib.contextmanager
def without_openssl():
    """Imports inside the ``with`` find no OpenSSL: ``ssl``, ``_ssl`` and ``_hashlib``
    (those not imported yet) are ``None`` in ``sys.modules``, so ``import ssl`` raises
    ImportError (Python's import system: "import of ssl halted; None in sys.modules").

    For the daemon's worker: it serves a unix socket and talks to Docker over one,
    no TLS anywhere, yet its libraries import OpenSSL's modules at the top: werkzeug
    and http.client ``ssl`` (both in ``try/except ImportError``), urllib3 (the same;
    requests then makes no default SSL context), hashlib ``_hashlib`` (it falls back
    to CPython's own md5/sha1/sha2/sha3, blake2 is CPython's anyway; without it
    ``hashlib.pbkdf2_hmac`` and ``scrypt`` are missing: secnet uses neither). Loaded,
    they map libcrypto and libssl and run OpenSSL's set-up: ~5 MiB of RSS in a fresh
    interpreter (``import ssl``: +6.0 MiB VmRSS, of which ``_hashlib`` 3.5).

    Nothing stays blocked: on leaving, the entries go, and a later ``import ssl``
    (a TLS path nobody configured) loads the real module. Modules imported inside
    keep what they bound (no TLS in urllib3). Except ``http.client`` and
    ``urllib.request``, imported first with ``ssl`` standing in (:func:`import_deferring`):
    they define their HTTPS classes only when ``import ssl`` succeeds, and
    prometheus-client imports ``HTTPSHandler`` (the real ``ssl`` loads at an HTTPS
    connection's set-up, never at import).
    A stand-in asked at import for a name it does not hold (a library newer than the
    one :func:`import_prometheus` knows) lifts the blocks: OpenSSL then loads, as it
    would without this function, and the import goes on.
    Not thread-safe against imports by other threads: for a process's start."""
    blocked = [n for n in OPENSSL_MODULES if n not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        for name in _HTTPS_LATER:
            import_deferring(name, "ssl")
        yield blocked
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def import_docker() -> types.ModuleType:
    """The Docker SDK without ``charset_normalizer`` (2.6 MiB of RSS, mostly the
    character tables it builds at import): requests imports it to guess the text
    encoding of a response that names none (``Response.apparent_encoding``), which
    the engine's JSON never needs (``Response.json`` reads UTF-8/16/32 from the bytes,
    requests.utils.guess_json_utf); it loads if requests ever guesses. requests reads
    only its ``__version__`` at import (the version check in requests/__init__.py)."""
    import importlib.metadata
    try:
        version = importlib.metadata.version("charset_normalizer")
    except importlib.metadata.PackageNotFoundError:
        return importlib.import_module("docker")
    return import_deferring("docker", "charset_normalizer", __version__=version)
