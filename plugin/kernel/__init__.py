"""Kernel I/O that is not policy: bridges and veths (``links``), Docker's
firewall chain (``dockerfw``), entering network namespaces (``netns``), held
host ports (``hostports``) and connection tracking (``conntrack``, one writer).
"""
from plugin.kernel.lightimport import defer_package_init

# pyroute2's __init__ imports all of pyroute2 (~6 MiB more than the daemon uses):
# import only the submodules that are named (plugin.kernel.lightimport)
defer_package_init("pyroute2")
