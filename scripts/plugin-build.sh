#!/usr/bin/env bash
# Build secnet's managed Docker plugin and install it: plugin-build.sh [install|rootfs].
#   install (default): build, then `docker plugin create` + `enable` as $PLUGIN_NAME
#                      (an existing plugin of that name is disabled and removed first)
#   rootfs:            only build build/plugin/{config.json,rootfs}
# Settings by environment:
#   PLUGIN_NAME   plugin name (default secnet; Docker adds the tag: secnet:latest)
#   BASE          base image of the Dockerfile; default: secnet-base:bookworm, made
#                 here once with debootstrap (no registry needed); where a registry
#                 is reachable, python:3.11-slim-bookworm works as it is.
#   PLUGIN_SETTINGS  `docker plugin set` arguments applied before the enable,
#                 e.g. "SECNET_LOG_LEVEL=debug state.source=/srv/secnet"
#   KEEP_LEGACY=1 do not stop a legacy daemon (scripts/plugin.sh); only for an
#                 engine in another network namespace (DOCKER_HOST)
# Caches under build/: the base image's tarball, a Python build venv, the
# dependency wheels and the exported rootfs (kept while the image is the same); a
# rebuild only remakes the secnet wheel (reproducible: unchanged sources, same
# bytes, every image layer reused) and what follows.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-install}
PLUGIN_NAME=${PLUGIN_NAME:-secnet}
LOCAL_BASE=secnet-base:bookworm
BASE=${BASE:-$LOCAL_BASE}
IMAGE=${IMAGE:-secnet-plugin-rootfs:latest}   # the rootfs image (a tag of its own for trial builds)
BUILD=$PWD/build
WHEELS=$BUILD/wheels          # cache: every wheel ever built or fetched
CONTEXT=$BUILD/context        # docker build context: wheels/ of this build only
PLUGIN_DIR=$BUILD/plugin      # config.json + rootfs/ for `docker plugin create`
PYENV=$BUILD/pyenv            # host venv with setuptools + wheel: builds offline

log() { echo "plugin-build: $*" >&2; }

apt_mirror() {
  # The first Debian mirror the host's apt uses (deb822 or one-line format).
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

ensure_local_base() {
  docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 && return 0
  local tarball=$BUILD/base-bookworm.tar
  if [ ! -s "$tarball" ]; then
    if ! command -v debootstrap >/dev/null; then
      log "installing debootstrap"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends debootstrap >/dev/null; }
    fi
    local mirror dir
    mirror=$(apt_mirror)
    dir=$(mktemp -d "$BUILD/base.XXXXXX")
    log "debootstrap --variant=minbase bookworm from $mirror (once; cached in $tarball)"
    if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$BUILD/debootstrap.log" 2>&1; then
      tail -20 "$BUILD/debootstrap.log" >&2
      rm -rf "$dir"
      return 1
    fi
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      # the same suites as the host: bookworm, -updates and -security
      cp /etc/apt/sources.list.d/debian.sources "$dir/etc/apt/sources.list.d/debian.sources"
      rm -f "$dir/etc/apt/sources.list"
    fi
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/* \
           "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
    tar -C "$dir" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$dir"
  fi
  log "importing $LOCAL_BASE"
  docker import -c 'CMD ["/bin/bash"]' "$tarball" "$LOCAL_BASE" >/dev/null
}

ensure_pyenv() {
  [ -x "$PYENV/bin/python" ] && "$PYENV/bin/python" -c 'import setuptools, wheel' 2>/dev/null && return 0
  log "making the build venv $PYENV"
  rm -rf "$PYENV"
  "${PYTHON:-python3}" -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check 'setuptools>=61' wheel
}

build_wheels() {
  # The secnet wheel from a clean copy of the sources (setuptools would
  # otherwise reuse a stale build/lib), then its dependencies: from the cache
  # when it has them all, else from the package index.
  local src
  src=$(mktemp -d "$BUILD/src.XXXXXX")
  cp -r plugin segmentation setup.cfg pyproject.toml "$src/"
  if [ -f README.md ]; then cp README.md "$src/"; else : >"$src/README.md"; fi
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  # the eBPF object is compiled inside the image build (Dockerfile, stage bpf), not taken from here
  rm -f "$src"/plugin/enforce/ebpf/bpf/*.o
  # setuptools' find_packages skips folders without __init__.py: package them anyway
  local d
  for d in $(find "$src/plugin" "$src/segmentation" -type d); do
    if [ ! -f "$d/__init__.py" ] && ls "$d"/*.py >/dev/null 2>&1; then
      log "warning: ${d#"$src"/} has no __init__.py (added in the wheel)"
      : >"$d/__init__.py"
    fi
  done
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/secnet-*.whl
  # Reproducible: the same sources give the same bytes (zip times from SOURCE_DATE_EPOCH,
  # 1980-01-01, the zip format's first), so the image build reuses all its layers.
  SOURCE_DATE_EPOCH=315532800 \
    "$PYENV/bin/pip" wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$WHEELS" "$src" >/dev/null
  rm -rf "$src"
  local whl
  whl=$(ls "$WHEELS"/secnet-*.whl)
  rm -rf "$CONTEXT"
  mkdir -p "$CONTEXT/wheels" "$CONTEXT/deps" "$CONTEXT/ebpf"
  # the datapath's C sources and its build script, for the Dockerfile's bpf stage
  cp plugin/enforce/ebpf/build.py "$CONTEXT/ebpf/"
  cp -r plugin/enforce/ebpf/bpf "$CONTEXT/ebpf/bpf"
  rm -f "$CONTEXT"/ebpf/bpf/*.o
  if ! "$PYENV/bin/pip" wheel -q --disable-pip-version-check --no-index --find-links "$WHEELS" \
        -w "$CONTEXT/deps" "$whl" >/dev/null 2>&1; then
    log "fetching dependency wheels (cached in $WHEELS)"
    "$PYENV/bin/pip" wheel -q --disable-pip-version-check --find-links "$WHEELS" -w "$WHEELS" "$whl" \
      >"$BUILD/pip-wheel.log" 2>&1 || { tail -20 "$BUILD/pip-wheel.log" >&2; return 1; }
    "$PYENV/bin/pip" wheel -q --disable-pip-version-check --no-index --find-links "$WHEELS" \
      -w "$CONTEXT/deps" "$whl"
  fi
  # secnet's wheel apart from its dependencies': the Dockerfile installs those in a layer
  # of their own, which a change of secnet alone leaves as it is
  mv "$CONTEXT"/deps/secnet-*.whl "$CONTEXT/wheels/"
}

build_rootfs() {
  log "docker build (base $BASE)"
  local old
  old=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  docker build -q --force-rm -f Dockerfile --build-arg "BASE=$BASE" -t "$IMAGE" "$CONTEXT" >/dev/null
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true   # the previous build, now untagged
  fi
  # The rootfs exported before is kept when it came from this very image (same id: the
  # same layers, so the same files); else exported anew (~160 MiB written).
  local id stamp=$BUILD/rootfs.image-id
  id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
  if [ -d "$PLUGIN_DIR/rootfs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then
    cp config.json "$PLUGIN_DIR/config.json"
    log "rootfs: unchanged image ${id:7:12}, kept $PLUGIN_DIR/rootfs"
    return 0
  fi
  rm -f "$stamp"
  rm -rf "$PLUGIN_DIR"
  mkdir -p "$PLUGIN_DIR/rootfs"
  local cid
  cid=$(docker create "$IMAGE" /bin/true)
  docker export "$cid" | tar -x -C "$PLUGIN_DIR/rootfs"
  docker rm "$cid" >/dev/null
  cp config.json "$PLUGIN_DIR/config.json"
  echo "$id" >"$stamp"
  log "rootfs: $(du -sh "$PLUGIN_DIR/rootfs" | cut -f1) in $PLUGIN_DIR/rootfs"
}

check_running() {
  # Enabled, and its socket answers as a network driver for a few seconds.
  local id sock ok=0
  id=$(docker plugin inspect -f '{{.Id}}' "$PLUGIN_NAME")
  sock=/run/docker/plugins/$id/secnet.sock   # whatever the engine's exec root
  for _ in $(seq 1 30); do
    if curl -s -m 2 --unix-socket "$sock" -X POST http://x/Plugin.Activate 2>/dev/null | grep -q NetworkDriver; then
      ok=$((ok + 1)); [ "$ok" -ge 3 ] && return 0
    fi
    sleep 0.3
  done
  log "the plugin does not answer on $sock; its last output (dockerd's log):"
  local dlog
  dlog=$(readlink "/proc/$(cat "${DOCKERD_PIDFILE:-/var/run/docker.pid}" 2>/dev/null)/fd/2" 2>/dev/null || true)
  [ -f "$dlog" ] && grep -a "plugin=$id" "$dlog" | tail -15 >&2
  return 1
}

ensure_shared_mounts() {
  # The plugin sees containers' network namespaces (bind mounts dockerd makes
  # under /run/docker/netns) only if mounts propagate into it (config.json:
  # rslave). systemd makes / shared at boot; a host booted without it keeps
  # mounts private, so do what systemd does.
  local prop
  prop=$(findmnt -no PROPAGATION / 2>/dev/null || echo unknown)
  if [[ $prop != shared* ]]; then
    log "mount --make-rshared / (was: $prop), as systemd does at boot"
    mount --make-rshared /
  fi
}

ensure_bpffs() {
  # The eBPF backend pins its programs and maps in the host's bpffs, bound
  # into the plugin (config.json): they must outlive the plugin. systemd
  # mounts it at boot; a host booted without systemd does not.
  if ! mountpoint -q /sys/fs/bpf; then
    log "mount -t bpf bpf /sys/fs/bpf, as systemd does at boot"
    mount -t bpf bpf /sys/fs/bpf
  fi
}

install_plugin() {
  if [ "${KEEP_LEGACY:-0}" != 1 ] && bash scripts/plugin.sh status >/dev/null 2>&1; then
    # Both would manage the same kernel objects and /var/lib/secnet.
    log "stopping the legacy daemon (scripts/plugin.sh): it must not run beside the managed plugin"
    bash scripts/plugin.sh stop
  fi
  if docker plugin inspect "$PLUGIN_NAME" >/dev/null 2>&1; then
    log "removing the installed $PLUGIN_NAME"
    docker plugin disable -f "$PLUGIN_NAME" >/dev/null 2>&1 || true
    docker plugin rm -f "$PLUGIN_NAME" >/dev/null
  fi
  mkdir -p /var/lib/secnet   # the state mount's source must exist
  ensure_shared_mounts
  ensure_bpffs
  local try out
  for try in 1 2 3 4 5; do
    # Right after a `plugin rm` dockerd may still hold the old rootfs blob
    # (it collects garbage in the background) and refuses the same one again.
    out=$(docker plugin create "$PLUGIN_NAME" "$PLUGIN_DIR" 2>&1) && break
    if [[ $out != *"already exists"* ]] || [ "$try" = 5 ]; then echo "$out" >&2; return 1; fi
    sleep 1
  done
  if [ -n "${PLUGIN_SETTINGS:-}" ]; then
    # shellcheck disable=SC2086  # one word per setting
    docker plugin set "$PLUGIN_NAME" $PLUGIN_SETTINGS
  fi
  docker plugin enable "$PLUGIN_NAME" >/dev/null
  check_running
  log "installed and enabled $PLUGIN_NAME (driver: docker network create -d $PLUGIN_NAME:latest ...)"
}

case "$MODE" in
  install|rootfs) ;;
  *) echo "usage: $0 [install|rootfs]" >&2; exit 2 ;;
esac
mkdir -p "$BUILD"
docker info >/dev/null 2>&1 || { log "no Docker engine answers (make engine)"; exit 1; }
[ "$BASE" = "$LOCAL_BASE" ] && ensure_local_base
ensure_pyenv
build_wheels
build_rootfs
[ "$MODE" = install ] && install_plugin
exit 0
