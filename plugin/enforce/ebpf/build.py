"""Compile the datapath: ``bpf/secnet.c`` -> ``bpf/secnet.o`` with clang for the bpf target.

Run as ``python -m plugin.enforce.ebpf.build`` (``scripts/venv.sh`` does, when
clang is installed); the backend also builds on first use when the object is
missing or older than its sources. Needs clang (14 or later), libbpf's
headers (Debian ``libbpf-dev``) and the kernel UAPI headers.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent / "bpf"
SOURCE = BPF_DIR / "secnet.c"
OBJECT = BPF_DIR / "secnet.o"


class BuildError(Exception):
    """The datapath could not be compiled (the message says why)."""


def sources() -> list:
    return [SOURCE, *sorted((BPF_DIR / "lib").glob("*.h"))]


def stale(obj: Path = OBJECT) -> bool:
    """True when ``obj`` is missing or older than any source."""
    if not obj.exists():
        return True
    built = obj.stat().st_mtime
    return any(src.stat().st_mtime > built for src in sources())


def command(obj: Path = OBJECT) -> list:
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return ["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-function",
            f"-I/usr/include/{multiarch}", "-c", str(SOURCE), "-o", str(obj)]


def build(obj: Path = OBJECT, force: bool = False) -> Path:
    """Compile when stale (or ``force``); returns the object's path.

    Raises BuildError when clang is missing or the compile fails.
    """
    if not force and not stale(obj):
        return obj
    if shutil.which("clang") is None:
        if obj.exists() and not force:
            return obj      # a shipped object (the plugin image has no compiler)
        raise BuildError("clang is not installed (Debian: apt-get install clang libbpf-dev)")
    tmp = obj.with_suffix(".o.tmp")
    res = subprocess.run(command(tmp), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"clang failed: {res.stderr.strip()[-2000:]}")
    tmp.replace(obj)
    return obj


def main() -> int:
    try:
        print(build(force="--force" in sys.argv))
    except BuildError as exc:
        print(f"secnet ebpf build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
