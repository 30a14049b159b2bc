"""Kernel I/O that is not policy: bridges and veths (``links``), Docker's
firewall chain (``dockerfw``), entering network namespaces (``netns``), held
host ports (``hostports``) and connection tracking (``conntrack``, one writer).
"""
