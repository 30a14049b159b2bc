"""Daemon settings, read from the environment once at start."""
from __future__ import annotations

import os
from dataclasses import dataclass

from plugin.envvars import env_int, flag as _flag

LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_DOCKER_HOST = "unix://var/run/docker.sock"  # the local engine socket


@dataclass(frozen=True)
class Settings:
    socket: str = "/run/docker/plugins/secnet.sock"
    state_dir: str = "/var/lib/secnet"
    log_level: str = "info"
    docker_host: str = ""
    metrics_addr: str = ""
    bpffs_mount: bool = True    # may the eBPF backend mount bpffs at /sys/fs/bpf when it is missing?
    dns: bool = True          # learn addresses for dns(NAME) rules (SECNET_DNS=0: off)
    dns_queue: int = 5353     # the NFQUEUE that holds DNS answers (SECNET_DNS_QUEUE)

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        """The settings in ``env`` (default: the environment). Raises ValueError, one
        line naming the variable, for a bad value."""
        env = os.environ if env is None else env
        level = env.get("SECNET_LOG_LEVEL", "info").strip().lower() or "info"
        if level not in LEVELS:
            raise ValueError(f"invalid SECNET_LOG_LEVEL {level!r}: allowed {', '.join(LEVELS)}")
        settings = cls(socket=env.get("SECNET_SOCKET") or cls.socket,
                       state_dir=env.get("SECNET_STATE_DIR") or cls.state_dir,
                       log_level=level,
                       docker_host=env.get("DOCKER_HOST", ""),
                       metrics_addr=env.get("SECNET_METRICS_ADDR", "").strip(),
                       bpffs_mount=_flag(env, "SECNET_BPFFS_MOUNT", True),
                       dns=_flag(env, "SECNET_DNS", True),
                       dns_queue=env_int(env, "SECNET_DNS_QUEUE", cls.dns_queue, 0, 65535))
        if settings.metrics_addr:
            metrics_address(settings.metrics_addr)
        if settings.dns:   # the DNS store's settings too, so that a bad one stops the start
            from plugin.dns.store import settings_from_env   # (plugin.dns imports this module)
            settings_from_env(env)
        return settings


def metrics_address(addr: str) -> tuple:
    """``(host, port)`` of SECNET_METRICS_ADDR ``host:port`` (IPv6 as ``[::1]:9100``; an
    empty host: every IPv4 address). Raises ValueError, one line, for anything else."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"invalid SECNET_METRICS_ADDR {addr!r}: allowed host:port, port 1..65535 "
                         "(e.g. 127.0.0.1:9100, [::1]:9100)")
    return host.strip("[]") or "0.0.0.0", int(port)
