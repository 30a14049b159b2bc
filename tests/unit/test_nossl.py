"""plugin.daemon.nossl: gunicorn's master without OpenSSL; the worker with the real ssl."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str, cwd=None, env_path: str = "") -> str:
    env = None
    if env_path:
        import os
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([env_path, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=60, cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_master_imports_gunicorn_without_openssl():
    out = _run("""
        import sys
        import plugin.daemon.server
        import gunicorn.workers.gthread, gunicorn.sock
        print("_ssl" in sys.modules, "ssl" in sys.modules, "gunicorn.arbiter" in sys.modules)
        import ssl                              # the stand-in left sys.modules: this is the real one
        print(hasattr(ssl, "SSLContext"), gunicorn.sock.ssl is ssl)
    """)
    assert out.splitlines() == ["False False True", "True False"]


def test_the_worker_gets_the_real_ssl_back_in_gunicorn():
    out = _run("""
        import plugin.daemon.server
        from plugin.daemon import nossl
        import gunicorn.config, gunicorn.sock, gunicorn.workers.base, gunicorn.workers.gthread
        print(nossl.restore_ssl())
        import ssl
        print(all(m.ssl is ssl for m in (gunicorn.config, gunicorn.sock, gunicorn.workers.gthread)),
              gunicorn.workers.base.SSLError is ssl.SSLError)
    """)
    assert out.splitlines() == ["4", "True True"]


def test_with_ssl_loaded_already_gunicorn_is_imported_as_usual():
    out = _run("""
        import ssl
        from plugin.daemon import nossl
        (config,) = nossl.import_without_ssl("gunicorn.config")
        print(config.ssl is ssl, nossl.restore_ssl())
    """)
    assert out == "True 0"


def test_a_module_that_reads_more_of_ssl_gets_the_real_one(tmp_path):
    (tmp_path / "reads_more_ssl.py").write_text("import ssl\nCONTEXT = ssl.SSLContext\n")
    out = _run("""
        import sys
        from plugin.daemon import nossl
        (mod,) = nossl.import_without_ssl("reads_more_ssl")
        import ssl
        print(mod.ssl is ssl, mod.CONTEXT is ssl.SSLContext, sys.modules["ssl"] is ssl)
    """, env_path=str(tmp_path))
    assert out == "True True True"
