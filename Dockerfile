# The root filesystem of secnet's managed Docker plugin (see config.json).
#
# Build context: a folder whose wheels/ holds the secnet wheel and deps/ the
# wheels of its dependencies, built on the host, and whose ebpf/ holds the eBPF
# datapath's C sources and build.py (scripts/plugin-build.sh does all of
# this; pip inside the build needs no network). BASE is any Debian bookworm
# image with or without Python: the default where a registry is reachable, or
# a local debootstrap import (secnet-base:bookworm, made by the script).
#
#   docker build -f Dockerfile --build-arg BASE=secnet-base:bookworm build/context
ARG BASE=python:3.11-slim-bookworm

# Stage 1: the eBPF datapath object (secnet.backend=ebpf), compiled here with
# clang for the bpf target by the package's own build.py; only the object
# goes on to the plugin's image (no compiler there).
FROM ${BASE} AS bpf
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN set -eux; \
    pkgs="clang llvm libbpf-dev linux-libc-dev"; \
    if ! command -v python3 >/dev/null; then pkgs="$pkgs python3"; fi; \
    apt-get update -q --error-on=any; \
    apt-get install -y -q --no-install-recommends $pkgs
COPY ebpf/ /src/ebpf/
RUN set -eux; rm -f /src/ebpf/bpf/*.o; \
    python3 /src/ebpf/build.py --force; \
    llvm-objdump -h /src/ebpf/bpf/secnet.o | grep -qw tc

# Stage 2: the plugin's root filesystem.
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

# The tools secnet runs: nft, iptables/ip6tables (the nft backend, like
# Debian's dockerd), conntrack, ip, nsenter; libbpf1 (the eBPF backend loads
# its object with it). No compiler, no docs.
RUN set -eux; \
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' \
        'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        'path-include /usr/share/locale/locale.alias' >/etc/dpkg/dpkg.cfg.d/01-secnet-slim; \
    pkgs="nftables iptables iproute2 conntrack util-linux libbpf1"; \
    if ! command -v python3 >/dev/null; then pkgs="$pkgs python3 python3-venv"; fi; \
    apt-get update -q --error-on=any; \
    apt-get install -y -q --no-install-recommends $pkgs; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/* \
        /usr/share/doc/* /usr/share/man/* /usr/share/info/*; \
    find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

# The dependencies first, in a layer of their own: Docker reuses it (and the apt layer
# above) while only secnet's own wheel changed. scripts/plugin-build.sh makes that wheel
# reproducible (SOURCE_DATE_EPOCH), so unchanged sources reuse every layer.
COPY deps/ /tmp/deps/
RUN set -eux; \
    python3 -m venv /opt/secnet; \
    /opt/secnet/bin/pip install -q --no-cache-dir --no-index --find-links /tmp/deps /tmp/deps/*.whl; \
    rm -rf /tmp/deps /root/.cache; \
    if dpkg -s python3-venv >/dev/null 2>&1; then \
        apt-get purge -y -q --auto-remove python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*; \
    fi

COPY wheels/ /tmp/wheels/
COPY --from=bpf /src/ebpf/bpf/secnet.o /tmp/secnet.o

# secnet in the venv at /opt/secnet, from the wheels only; then pip and the
# bootstrap wheels go (nothing installs into the image afterwards).
# /usr/local/bin/secnet-plugin, the entrypoint, makes /proc/sys writable.
# Containers' namespaces (SandboxKey /var/run/docker/netns/ID) are reached
# through the engine's exec root, mounted at /run/host-docker (config.json).
RUN set -eux; \
    /opt/secnet/bin/pip install -q --no-cache-dir --no-index --no-deps /tmp/wheels/secnet-*.whl; \
    /opt/secnet/bin/pip check; \
    /opt/secnet/bin/pip uninstall -q -y pip setuptools || true; \
    rm -rf /tmp/wheels /root/.cache; \
    obj=$(/opt/secnet/bin/python3 -c 'from plugin.enforce.ebpf import build; print(build.OBJECT)'); \
    mv /tmp/secnet.o "$obj"; touch "$obj"; \
    printf '%s\n' '#!/bin/sh' \
        '# Docker mounts /proc/sys read-only in a plugin; secnet sets sysctls of its' \
        '# own bridges (net.ipv4.conf.BRIDGE.route_localnet). CAP_SYS_ADMIN allows this.' \
        'mount -o remount,bind,rw /proc/sys 2>/dev/null || echo "secnet-plugin: /proc/sys stays read-only" >&2' \
        '# (python -m: a command line that a host-side `pkill -f bin/secnet-plugin`,' \
        '# meant for a legacy daemon, does not match)' \
        'exec /opt/secnet/bin/python3 -m plugin.daemon.server "$@"' >/usr/local/bin/secnet-plugin; \
    chmod 755 /usr/local/bin/secnet-plugin; \
    ln -sf /opt/secnet/bin/secnet /usr/local/bin/secnet; \
    mkdir -p /var/lib/secnet /run/docker/plugins /run/host-docker; \
    ln -s /run/host-docker/netns /run/docker/netns; \
    /opt/secnet/bin/python3 -c 'import plugin.daemon.server, plugin.daemon.wiring, plugin.daemon.app, plugin.cli.main'; \
    /usr/local/bin/secnet --help >/dev/null; \
    /opt/secnet/bin/python3 -c 'import ctypes; from plugin.enforce.ebpf import build; ctypes.CDLL("libbpf.so.1"); assert not build.stale(), "stale datapath object"'; \
    nft --version; iptables --version; conntrack --version; nsenter --version

CMD ["/usr/local/bin/secnet-plugin"]
