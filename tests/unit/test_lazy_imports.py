"""The worker loads dnspython only when it parses a DNS answer (a daemon without
DNS rules never does)."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_dnspython_is_loaded_by_the_first_answer_not_by_the_daemon():
    code = textwrap.dedent("""
        import sys
        import plugin.daemon.wiring, plugin.dns.service, plugin.dns.learner, plugin.observe.explain
        print(any(m == "dns" or m.startswith("dns.") for m in sys.modules))
        from plugin.dns.answers import addresses
        print(addresses(b"not a DNS message"), "dns.message" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[:2] == ["False", "[] True"]
