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


def test_docker_imports_without_charset_normalizer_and_it_loads_at_first_use():
    out = _run("""
        import sys, warnings
        warnings.simplefilter("error")          # no RequestsDependencyWarning either
        from plugin.kernel.lightimport import import_docker
        docker = import_docker()
        import requests
        before = "charset_normalizer" in sys.modules
        client = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
        r = requests.models.Response()
        r._content, r.encoding = '{"Name": "é"}'.encode("utf-16"), None
        decoded = r.json()["Name"]              # JSON: the encoding read from the bytes
        still_out = "charset_normalizer" in sys.modules
        r._content = "été".encode("latin-1")
        guessed = r.apparent_encoding           # a guess: the real module loads now
        import charset_normalizer
        print(before, decoded, still_out, bool(guessed), type(charset_normalizer).__name__,
              "charset_normalizer" in sys.modules)
    """)
    assert out == "False é False True module True"


def test_import_deferring_leaves_an_imported_module_alone():
    out = _run("""
        import sys, json
        from plugin.kernel.lightimport import import_deferring
        import_deferring("email.utils", "json")
        print(type(sys.modules["json"]).__name__)
    """)
    assert out == "module"
