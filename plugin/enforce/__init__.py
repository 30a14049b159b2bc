"""Enforcement: the backend seam, the reconciler, and the datapaths (nftables, ebpf)."""
