"""The Zarr v3 feature store: layout, manifest, writer and the read API the decoder uses.

Only this subpackage imports zarr.
"""
from __future__ import annotations

from cellgap.featurestore.store.manifest import Manifest, StorageRecord
from cellgap.featurestore.store.reader import Batch, FeatureStore, open_store

__all__ = ["Batch", "FeatureStore", "Manifest", "StorageRecord", "open_store"]
