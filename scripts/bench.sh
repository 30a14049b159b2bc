#!/usr/bin/env bash
# secnet benchmarks (`make bench`): installs what only the benchmark needs
# (iperf3, ping, sockperf, matplotlib in the venv), makes sure the plugin answers
# (starting it only when it does not: a running daemon is shared with others'
# tests and is not restarted), then runs bench/run.py with the given flags
# (e.g. --quick). A daemon it started, it stops again at the end, so that no
# benchmark daemon is left holding the plugin socket. Needs root, the engine and
# the test image (make engine image).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in iperf3 iputils-ping sockperf; do have_pkg "$pkg" || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  echo "bench: installing matplotlib into .venv"
  .venv/bin/pip install -q --disable-pip-version-check 'matplotlib>=3.5,<4'
fi
sock=${SECNET_SOCKET:-/run/docker/plugins/secnet.sock}
if ! { [ -S "$sock" ] && curl -s --max-time 5 --unix-socket "$sock" -X POST http://x/Plugin.Activate \
        | grep -q NetworkDriver; }; then
  bash scripts/plugin.sh start
  trap 'bash scripts/plugin.sh stop >/dev/null 2>&1 || true' EXIT
fi
.venv/bin/python -m bench.run "$@"
