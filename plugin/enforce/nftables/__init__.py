"""The nftables datapath: a fixed ruleset per network driven by set and map elements.

``backend.NftBackend`` implements ``plugin.enforce.backend.Backend``;
``ruleset`` writes the tables, ``elements`` computes their elements (pure),
``kernel`` reads them back, ``drops`` is where every drop goes,
``northsouth`` does NAT and published ports, ``nflog`` reads drop reports,
``runner`` runs nft.
"""
from .backend import NftBackend

__all__ = ["NftBackend"]
