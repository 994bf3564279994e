"""An extraction planned before anything is written: the data set opened, the encoder built once.

`run_extraction` runs a plan; `cellgap compare` first matches the plan's manifest against existing
stores (`featurestore.store.manifest.check_compatible`) and runs the same plan only when none fits,
so a large encoder is loaded once, not once to plan and again to extract.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from cellgap.core.views import VIEW_SETS
from cellgap.featurestore.datasets import open_dataset
from cellgap.featurestore.datasets.base import TileDataset, TileMeta
from cellgap.featurestore.encoders.encoder import FrozenEncoder, pick_device
from cellgap.featurestore.encoders.precision import resolve_precision
from cellgap.featurestore.errors import DatasetError
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.magnification import settle_magnification
from cellgap.featurestore.store.manifest import Manifest, StorageRecord, new_manifest


@dataclass
class ExtractionPlan:
    """What one extraction reads, runs and records. `encoder` is None once handed over to dask workers."""

    config: ExtractConfig  # with the data set's tile size
    dataset: TileDataset
    metas: Sequence[TileMeta]
    encoder: FrozenEncoder | None
    manifest: Manifest

    def with_store(self, store: str) -> ExtractionPlan:
        """The same plan writing to another store location."""
        return replace(self, config=self.config.model_copy(update={"store": store}))


def effective_config(config: ExtractConfig, tile_size: int) -> ExtractConfig:
    """The config with the encoder's tile size set to the data set's (formats with fixed tiles win)."""
    if tile_size == config.encoder.tile_size:
        return config
    return config.model_copy(update={"encoder": config.encoder.model_copy(update={"tile_size": tile_size})})


def settled_precision(config: ExtractConfig) -> ExtractConfig:
    """The config with `auto` precision resolved for the device that will extract (`config.device`)."""
    if config.encoder.precision != "auto":
        return config
    precision = resolve_precision("auto", pick_device(config.device).type)
    return config.model_copy(update={"encoder": config.encoder.model_copy(update={"precision": precision})})


def plan_extraction(config: ExtractConfig, *, device: str | None = None) -> ExtractionPlan:
    """Open the data set and build the encoder (on `device`, else the config's) as `run_extraction` needs them.

    The manifest does not depend on the planning device: a plan made on a CPU for a GPU extraction
    records the GPU's precision, so it describes the store the GPU will write.
    """
    config = settled_precision(config)
    dataset = open_dataset(config.dataset, tile_size=config.encoder.tile_size, split_seed=config.split_seed,
                           magnification=config.magnification)
    config = effective_config(config, dataset.info.tile_size)
    metas = dataset.metas()
    if not metas:
        raise DatasetError(f"{config.dataset}: the data set has no tiles")
    info, source = settle_magnification(dataset.info, config.dataset, config.magnification)
    mpp = config.mpp if config.mpp is not None else info.mpp
    if config.mpp is not None and info.mpp is not None and abs(config.mpp / info.mpp - 1) > 0.05:
        raise DatasetError(f"{config.dataset}: its tiles are read at {info.mpp} um per pixel, not --mpp {config.mpp}")
    encoder = FrozenEncoder(config.encoder, device=pick_device(device or config.device))
    storage = StorageRecord(dtype=config.dtype, codec=config.codec, shard_tiles=config.shard_tiles,
                            views=VIEW_SETS[config.views])
    return ExtractionPlan(config, dataset, metas, encoder, new_manifest(encoder.description, info, metas, storage,
                                                                             magnification_source=source, mpp=mpp))
