#!/usr/bin/env bash
# Start dockerd in the background unless an engine already answers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/detach.sh
mkdir -p .run
if docker info >/dev/null 2>&1; then exit 0; fi
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid    # stale: its process is gone
fi
# Managed plugins see new container namespaces only if / is a shared mount
# (systemd makes it so at boot; a machine without systemd may not).
mount --make-rshared / 2>/dev/null || true
if ! pgrep -x -r D,R,S dockerd >/dev/null; then
  echo "starting dockerd (log: .run/dockerd.log)"
  # dockerd outlives this script: it must hold none of the caller's descriptors, and it
  # gets a session of its own (setsid), so that killing the caller's process group
  # (a finished shell job, a timeout) does not take the shared engine with it.
  (close_inherited_fds; exec setsid nohup dockerd >>.run/dockerd.log 2>&1 </dev/null) &
fi
for _ in $(seq 1 120); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd did not answer within 60 s; see .run/dockerd.log" >&2
tail -20 .run/dockerd.log >&2 || true
exit 1
