"""Rule backends: turn a compiled policy into kernel state (nftables first)."""
