"""The eBPF datapath (``secnet.backend=ebpf``): see docs/ebpf.md and backend.py."""
from .backend import EbpfBackend

__all__ = ["EbpfBackend"]
