# Sourced by scripts that start a process which outlives them (dockerd, the
# daemon): `close_inherited_fds` in the subshell that execs it, so that it
# holds none of its caller's descriptors (a caller's flock would stay held).
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}
