#!/usr/bin/env bash
# Run the secnet daemon as a legacy plugin in the background: start|stop|kill|status.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/detach.sh
RUN=${SECNET_RUN_DIR:-$PWD/.run}
PIDFILE=$RUN/plugin.pid
LOG=$RUN/plugin.log
SOCK=${SECNET_SOCKET:-/run/docker/plugins/secnet.sock}
mkdir -p "$RUN"
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
stop() {
  local sig=${1:-TERM}
  if running; then
    local pid; pid=$(cat "$PIDFILE")
    pkill -"$sig" -P "$pid" 2>/dev/null || true   # the gunicorn worker
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  # a daemon started by other means (or an orphaned worker)
  pkill -"$sig" -f "$PWD/.venv/bin/secnet-plugin" 2>/dev/null || true
  pkill -"$sig" -f "python3? \.venv/bin/secnet-plugin" 2>/dev/null || true  # started by an older script
  rm -f "$PIDFILE"
}
start() {
  stop TERM
  # The daemon outlives its caller: it must inherit none of the caller's open
  # descriptors (the e2e lock of /work/tools/e2e.sh would stay held by it).
  (
    close_inherited_fds
    SECNET_SOCKET=$SOCK exec nohup "$PWD/.venv/bin/secnet-plugin" >>"$LOG" 2>&1 </dev/null
  ) &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if [ -S "$SOCK" ] && curl -s --unix-socket "$SOCK" -X POST http://x/Plugin.Activate | grep -q NetworkDriver; then
      return 0
    fi
    running || break
    sleep 0.1
  done
  echo "secnet-plugin did not come up; see $LOG" >&2
  tail -20 "$LOG" >&2
  return 1
}
case "${1:-}" in
  start) start ;;
  stop) stop TERM ;;
  kill) stop KILL ;;
  status) running && echo "running (pid $(cat "$PIDFILE"))" || { echo "stopped"; exit 1; } ;;
  *) echo "usage: $0 start|stop|kill|status" >&2; exit 2 ;;
esac
