"""Read-only views for the CLI: ``views`` (status, show), ``explain``,
``verify`` and its ``probes``, the drop log (``droplog``) and ``metrics``.
Nothing here writes kernel state or the daemon's state.
"""
