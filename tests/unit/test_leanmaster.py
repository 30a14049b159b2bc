"""plugin.daemon.leanmaster: gunicorn's master without OpenSSL and importlib.metadata;
the worker with the real importlib.metadata, and still without OpenSSL."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(code: str, path: str = "") -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])) if path else None
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_master_imports_gunicorn_without_openssl_and_metadata():
    out = _run("""
        import sys
        import plugin.daemon.server
        import gunicorn.workers.gthread, gunicorn.sock, gunicorn.util
        print("_ssl" in sys.modules, "ssl" in sys.modules, "importlib.metadata" in sys.modules,
              "zipfile" in sys.modules, "gunicorn.arbiter" in sys.modules,
              "argparse" in sys.modules, "concurrent.futures" in sys.modules)
        import ssl                              # the stand-ins left sys.modules: these are real
        import importlib.metadata
        print(hasattr(ssl, "SSLContext"), gunicorn.sock.ssl is ssl,
              gunicorn.util.importlib_metadata is importlib.metadata)
    """)
    assert out.splitlines() == ["False False False False True False False", "True False False"]


def test_gunicorn_reaches_the_real_metadata_at_first_use():
    out = _run("""
        import sys
        import plugin.daemon.server
        import gunicorn.util
        dist = gunicorn.util.importlib_metadata.distribution("gunicorn")
        print(dist.metadata["Name"].lower(), "importlib.metadata" in sys.modules,
              type(sys.modules["importlib.metadata"]).__name__)
    """)
    assert out == "gunicorn True module"


def test_the_worker_gets_the_real_metadata_back_and_keeps_gunicorn_without_tls():
    out = _run("""
        import sys
        import plugin.daemon.server
        from plugin.daemon import leanmaster
        import gunicorn.config, gunicorn.sock, gunicorn.util, gunicorn.workers.base, gunicorn.workers.gthread
        print(leanmaster.restore_in_worker())
        import importlib.metadata, concurrent.futures
        print(gunicorn.util.importlib_metadata is importlib.metadata, "ssl" in sys.modules,
              gunicorn.workers.gthread.futures is concurrent.futures,
              all(m.ssl is leanmaster.SSL for m in (gunicorn.config, gunicorn.sock, gunicorn.workers.gthread)),
              gunicorn.workers.gthread.ssl.SSL_ERROR_EOF, issubclass(gunicorn.workers.base.SSLError, OSError))
    """)
    assert out.splitlines() == ["2", "True False True True 8 True"]


def test_with_ssl_loaded_already_gunicorn_gets_the_real_one():
    out = _run("""
        import ssl
        from plugin.daemon import leanmaster
        (config,) = leanmaster.import_lean("gunicorn.config")
        print(config.ssl is ssl)
    """)
    assert out == "True"


def test_a_module_that_reads_more_of_ssl_gets_the_real_one(tmp_path):
    (tmp_path / "reads_more_ssl.py").write_text("import ssl\nCONTEXT = ssl.SSLContext\n")
    out = _run("""
        import sys
        from plugin.daemon import leanmaster
        (mod,) = leanmaster.import_lean("reads_more_ssl")
        import ssl
        print(mod.ssl is ssl, mod.CONTEXT is ssl.SSLContext, sys.modules["ssl"] is ssl)
    """, path=str(tmp_path))
    assert out == "True True True"


def test_the_master_has_no_email_utils_or_logging_config_and_the_worker_dates_its_responses():
    out = _run("""
        import sys
        import plugin.daemon.server
        import gunicorn.glogging, gunicorn.util
        print(*(m in sys.modules for m in ("email.utils", "email.charset", "logging.config", "logging.handlers")))
        from plugin.daemon import leanmaster
        leanmaster.restore_in_worker()
        print(gunicorn.util.http_date(0), "logging.config" in sys.modules)
    """)
    assert out.splitlines() == ["False False False False", "Thu, 01 Jan 1970 00:00:00 GMT False"]


def test_gunicorns_log_configuration_reaches_the_real_logging_config():
    out = _run("""
        import logging, sys
        import plugin.daemon.server
        import gunicorn.glogging
        gunicorn.glogging.dictConfig({"version": 1, "loggers": {"leanmaster.test": {"level": "ERROR"}}})
        print(logging.getLogger("leanmaster.test").level, type(sys.modules["logging.config"]).__name__)
    """)
    assert out == "40 module"


def test_the_master_does_not_load_sqlite_and_the_worker_does():
    """The master never opens the state: libsqlite3 (1.1 MiB of its RSS) loads in the worker."""
    out = _run("""
        import sys
        import plugin.daemon.server
        print("sqlite3" in sys.modules, "_sqlite3" in sys.modules)
        from plugin.daemon import app
        print("sqlite3" in sys.modules)
    """)
    assert out.splitlines() == ["False False", "True"]
