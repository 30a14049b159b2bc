"""Kernel I/O that is not policy: bridges and veths (``links``), entering network
namespaces (``netns``), connection tracking (``conntrack``, one writer), the
change notifications of nftables, tc and links (``nftwatch``, ``tcwatch``,
``linkwatch``), the mark bits secnet sets (``marks``) and address facts
(``addresses``). Nothing here imports the packages above it (enforce, dns,
driver, observe, daemon).
"""
from plugin.kernel.lightimport import defer_package_init

# pyroute2's __init__ imports all of pyroute2 (~6 MiB more than the daemon uses):
# import only the submodules that are named (plugin.kernel.lightimport)
defer_package_init("pyroute2")
