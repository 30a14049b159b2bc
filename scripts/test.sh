#!/usr/bin/env bash
# make test: the three tiers at the same time. The e2e tier runs in order in this
# pytest (one dockerd, one plugin); E2E_WORKERS=2 runs it on two pytest-xdist
# workers instead, a test file per worker (a test that takes the daemon down is
# marked `exclusive` and runs alone, tests/e2e/workers.py; not yet proven green on
# the whole tier). Meanwhile a second pytest runs the unit and kernel tiers on two
# pytest-xdist workers (a kernel test lives in its own namespaces and pin
# directory, so two never meet). Its output follows the e2e tier's. Exit status:
# non-zero when either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p .run
log=.run/test-unit-kernel.log
"$PY" -m pytest -q -rs --durations=30 -n 2 tests/unit tests/kernel >"$log" 2>&1 &
local=$!
trap 'kill "$local" 2>/dev/null' EXIT   # interrupted: do not leave it running
echo "unit and kernel tiers: running alongside (output below, when the e2e tier is done)"
workers=${E2E_WORKERS:-0}
if [ "$workers" -gt 0 ]; then set -- -n "$workers" --dist loadfile; else set --; fi
"$PY" -m pytest -q -rs --durations=30 "$@" tests/e2e
e2e=$?
wait "$local"
local_rc=$?
trap - EXIT
echo "--- unit and kernel tiers (ran alongside the e2e tier) ---"
cat "$log"
[ "$e2e" -eq 0 ] && [ "$local_rc" -eq 0 ]
