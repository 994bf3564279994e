"""The manifest an extraction would write, computed without writing anything (to find a reusable store).

`planned_manifest` opens the data set and builds the encoder the way `run_extraction` does, so the
result can be compared with existing stores by `featurestore.store.manifest.check_compatible`.
"""
from __future__ import annotations

from featurestore.datasets import open_dataset
from featurestore.encoders.encoder import FrozenEncoder, pick_device
from featurestore.errors import DatasetError
from featurestore.extract.config import ExtractConfig
from featurestore.store.manifest import Manifest, StorageRecord, new_manifest
from featurestore.views import VIEW_SETS


def effective_config(config: ExtractConfig, tile_size: int) -> ExtractConfig:
    """The config with the encoder's tile size set to the data set's (formats with fixed tiles win)."""
    if tile_size == config.encoder.tile_size:
        return config
    return config.model_copy(update={"encoder": config.encoder.model_copy(update={"tile_size": tile_size})})


def planned_manifest(config: ExtractConfig, *, device: str = "cpu") -> Manifest:
    """The manifest `run_extraction(config)` would write (its `created` time aside).

    The encoder is built on `device` (CPU by default: the description, weights hash and layer
    shapes do not depend on the device, and the planning machine may have no GPU).
    """
    dataset = open_dataset(config.dataset, tile_size=config.encoder.tile_size, split_seed=config.split_seed)
    info = dataset.info
    config = effective_config(config, info.tile_size)
    metas = dataset.metas()
    if not metas:
        raise DatasetError(f"{config.dataset}: the data set has no tiles")
    encoder = FrozenEncoder(config.encoder, device=pick_device(device))
    storage = StorageRecord(dtype=config.dtype, codec=config.codec, shard_tiles=config.shard_tiles,
                            views=VIEW_SETS[config.views])
    return new_manifest(encoder.description, info, metas, storage)
