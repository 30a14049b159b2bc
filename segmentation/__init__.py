"""secnet's policy model: network options, allow rules and their compilation.

Pure, immutable data and functions only. Nothing in this package (outside
``segmentation/backends/``) touches the kernel, Docker, Flask or the network;
``tests/unit/test_purity.py`` enforces that boundary.
"""
