#!/usr/bin/env bash
# Install what secnet's demo and tests need on a Debian host, only what is missing.
set -euo pipefail
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# clang, llvm, libbpf-dev, bpftool: the eBPF backend's datapath (plugin/enforce/ebpf) is compiled here
# (the DNS answer queue is read on a plain netlink socket: plugin/dns/queue.py, no library)
for pkg in docker.io nftables iproute2 busybox-static iptables conntrack iperf3 sockperf python3-venv curl \
           clang llvm libbpf-dev libbpf1 bpftool iputils-ping; do
  have_pkg "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
modprobe br_netfilter 2>/dev/null || true
# bpffs for the eBPF backend's pins (the daemon mounts it too when missing)
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
