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


def test_without_openssl_the_worker_libraries_import_and_no_libcrypto_is_mapped():
    out = _run("""
        import sys
        from plugin.kernel.lightimport import import_docker, without_openssl
        with without_openssl() as blocked:
            try:
                import ssl
                halted = False
            except ImportError:
                halted = True
            import hashlib, hmac, http.client, flask, werkzeug.serving
            docker = import_docker()
            import urllib3.connection
        maps = open("/proc/self/maps").read()
        print(sorted(blocked), halted, [m for m in ("ssl", "_ssl", "_hashlib") if m in sys.modules],
              "libcrypto" in maps, "libssl" in maps)
        print(hashlib.sha256(b"secnet").hexdigest()[:12], hashlib.blake2b(b"x", digest_size=4).hexdigest(),
              hmac.new(b"k", b"m", "sha256").hexdigest()[:8], urllib3.connection.ssl)
        client = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")   # plain HTTP
        import ssl                              # nothing stays blocked: the real module now
        print(hasattr(ssl, "SSLContext"), "libcrypto" in open("/proc/self/maps").read())
    """)
    assert out.splitlines() == ["['_hashlib', '_ssl', 'ssl'] True [] False False",
                                "0dccfe60da30 b1ba07e5 b60090e3 None", "True True"]


def test_without_openssl_leaves_loaded_modules_alone():
    out = _run("""
        import sys, ssl, hashlib
        from plugin.kernel.lightimport import without_openssl
        with without_openssl() as blocked:
            import ssl as again
        print(blocked, again is ssl)
    """)
    assert out == "[] True"


def test_pyroute2_imports_with_ssl_standing_in_and_gets_the_real_one_at_first_use():
    out = _run("""
        import sys
        import plugin.kernel
        from plugin.kernel.lightimport import import_iproute, without_openssl
        with without_openssl():
            linux = import_iproute()
        probe = sys.modules["pyroute2.netlink.rtnl.probe_msg"]
        print(hasattr(linux, "IPRoute"), type(probe.ssl).__name__, "ssl" in sys.modules)
        print(probe.ssl.CERT_REQUIRED == 2, type(sys.modules["ssl"]).__name__)   # first use: the real ssl
    """)
    assert out.splitlines() == ["True _OnFirstUse False", "True module"]


def test_prometheus_client_scrapes_without_loading_openssl():
    out = _run("""
        import sys
        from plugin.kernel.lightimport import import_prometheus, without_openssl
        with without_openssl():                 # as the daemon's worker: hashlib without OpenSSL
            import hashlib, hmac, urllib.request
        import_prometheus()
        from prometheus_client import CollectorRegistry, Counter, generate_latest
        registry = CollectorRegistry()
        Counter("secnet_test", "a test counter", registry=registry).inc()
        text = generate_latest(registry).decode()
        print("secnet_test_total 1.0" in text, "ssl" in sys.modules, "libcrypto" in open("/proc/self/maps").read())
        import prometheus_client.exposition as exposition
        print(int(exposition.ssl.CERT_REQUIRED), type(sys.modules["ssl"]).__name__)   # first use: the real ssl
    """)
    assert out.splitlines() == ["True False False", "2 module"]


def test_pyroute2_imports_without_unittest_and_its_mock_is_made_at_first_use():
    out = _run("""
        import sys
        import plugin.kernel
        from plugin.kernel.lightimport import import_iproute
        import_iproute()
        from pyroute2.netlink.rtnl.iprsocket import NotLocal
        print([m for m in sys.modules if m.split(".")[0] == "unittest"])
        queue = NotLocal.msg_queue
        queue.put_nowait("message")
        queue.flag = 3
        print(queue.put_nowait.call_args.args, queue.flag, type(queue._mock).__name__, "unittest.mock" in sys.modules)
    """)
    assert out.splitlines() == ["[]", "('message',) 3 Mock True"]


def test_a_library_reading_an_unknown_ssl_name_at_import_loads_the_real_ssl_inside_without_openssl(tmp_path):
    # a newer library version that reads an ssl name at import which the stand-in
    # does not hold: the saving is given up, the import succeeds
    (tmp_path / "newlib.py").write_text("import ssl\nDEFAULT = ssl.create_default_context\n")
    out = _run(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from plugin.kernel.lightimport import import_deferring, without_openssl
        with without_openssl():
            newlib = import_deferring("newlib", "ssl", TLSVersion=object)
        print(callable(newlib.DEFAULT), type(sys.modules["ssl"]).__name__,
              [m for m in ("ssl", "_ssl", "_hashlib") if sys.modules.get(m, 0) is None])
    """)
    assert out == "True module []"
