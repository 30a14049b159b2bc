"""The e2e tier's run-wide lock (tests/e2e/workers.py) on two real pytest-xdist
workers: a test marked ``exclusive`` overlaps no other test, a module marked
exclusive keeps the lock from its first test's set-up to its last teardown, and
ordinary tests do run side by side. Each test records its interval (wall clock)
in a file; the intervals are checked afterwards."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).resolve().parents[1] / "e2e" / "workers.py"

CONFTEST = '''
from workers import pytest_runtest_protocol  # the e2e tier's hook itself
def pytest_configure(config):
    config.addinivalue_line("markers", "exclusive: runs alone")
'''

RECORD = '''
import os, time, pytest
LOG = {log!r}
def rec(name, t0):
    with open(LOG, "a") as f:
        f.write(f"{{name}} {{t0}} {{time.time()}}\\n")
'''

PLAIN = RECORD + '''
@pytest.mark.parametrize("i", range(3))
def test_shared(i):
    t = time.time(); time.sleep(0.3); rec("s{tag}%d" % i, t)
@pytest.mark.exclusive
def test_alone():
    t = time.time(); time.sleep(0.3); rec("x{tag}", t)
'''

MODULE = RECORD + '''
pytestmark = pytest.mark.exclusive
@pytest.fixture(scope="module")
def swapped():
    t = time.time(); yield; rec("MODULE", t)
@pytest.mark.parametrize("i", range(3))
def test_in_module(swapped, i):
    time.sleep(0.1)
'''


def overlap(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_exclusive_tests_run_alone_and_the_others_side_by_side(tmp_path):
    log = tmp_path / "intervals.txt"
    shutil.copy(WORKERS, tmp_path / "workers.py")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for tag in "abcd":
        (tmp_path / f"test_{tag}.py").write_text(PLAIN.format(log=str(log), tag=tag))
    (tmp_path / "test_m.py").write_text(MODULE.format(log=str(log)))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile",
                          "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "SECNET_E2E_LOCK_DIR": str(tmp_path / "locks")})
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [(n, float(a), float(b)) for n, a, b in (line.split() for line in log.read_text().splitlines())]
    assert len(rows) == 4 * 4 + 1, rows
    alone = [r for r in rows if r[0].startswith("x") or r[0] == "MODULE"]
    clashes = [(a[0], b[0]) for a in alone for b in rows if b is not a and overlap(a, b)]
    assert not clashes, f"exclusive tests overlapped others: {clashes}"
    shared = [r for r in rows if r[0].startswith("s")]
    side_by_side = [(a[0], b[0]) for i, a in enumerate(shared) for b in shared[i + 1:]
                    if a[0][1] != b[0][1] and overlap(a, b)]
    assert side_by_side, "no two ordinary tests of different files ran at the same time"
