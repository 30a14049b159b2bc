"""defer_package_init: a package's submodules without its __init__, and the
__init__'s names still there on first use."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_a_submodule_loads_without_the_package_init():
    out = _run("""
        import sys
        from plugin.kernel.lightimport import defer_package_init
        defer_package_init("pyroute2")   # (plugin.kernel has done it already)
        from pyroute2.iproute.linux import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
        print(sum(m.startswith("pyroute2.ndb") or m.startswith("pyroute2.ipdb") for m in sys.modules))
    """)
    assert out == "0"


def test_the_init_runs_on_first_use_of_its_names():
    out = _run("""
        import sys
        from plugin.kernel.lightimport import defer_package_init
        defer_package_init("pyroute2")
        from pyroute2 import config            # a submodule: still no __init__
        assert "pyroute2.ndb.main" not in sys.modules
        from pyroute2 import NDB, IPRoute      # names of the __init__: it runs now
        import pyroute2
        from pyroute2.iproute.linux import IPRoute as linux_iproute
        print(IPRoute is linux_iproute, "pyroute2.ndb.main" in sys.modules, pyroute2.__version__ != "")
    """)
    assert out == "True True True"


def test_an_imported_or_missing_package_is_left_alone():
    out = _run("""
        import json
        from plugin.kernel.lightimport import defer_package_init
        print(defer_package_init("json"), defer_package_init("no_such_package_here"))
    """)
    assert out == "False False"
