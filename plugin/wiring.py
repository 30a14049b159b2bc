"""Optional parts of the daemon (policy writer, label watcher, CLI API)."""
from __future__ import annotations


def attach_extensions(driver, settings):
    """Attach what exists; returns the CLI API object (or None)."""
    return None
