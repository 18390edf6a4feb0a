"""Offline preparation for ATST virtual IHC staining: masks, stain channels, shards."""

__version__ = "0.1.0"
