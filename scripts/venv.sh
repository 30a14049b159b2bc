#!/usr/bin/env bash
# Make .venv with secnet installed (editable) and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Editable in setuptools' "compat" mode: a plain .pth puts the checkout on sys.path. The
# default mode installs an import finder that `site` loads in every process, ~13-17 ms
# of each `secnet` call (bench/results/2026-11-30-set18.md). The stamp's name changed
# with the mode, so that a venv made before is installed again.
stamp=.venv/.secnet-installed-compat
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  # (a pip without --config-settings, < 22.1: the default mode, slower but the same install)
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat \
    || .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
# Bytecode for secnet's own modules, as an installed package has it: with
# PYTHONDONTWRITEBYTECODE set (as on these machines) nothing writes it at import, and
# every `secnet` call would compile the CLI's modules again (~10 ms of each call).
# Only stale files are compiled; a stale .pyc is never used (Python checks the source).
.venv/bin/python -m compileall -q plugin segmentation >/dev/null || true   # an optimisation only
# The eBPF datapath object (plugin/enforce/ebpf/bpf/secnet.o), rebuilt when its sources changed.
if command -v clang >/dev/null; then
  .venv/bin/python -c "from plugin.enforce.ebpf.build import main; raise SystemExit(main())" >/dev/null
fi
