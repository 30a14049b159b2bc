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

import importlib
import importlib.util
import sys
import threading

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
