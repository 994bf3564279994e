"""Training targets computed once per tile and kept in the store beside the features.

sm1 packs the 3-class map (bits 0-1) and the regression-weight flag (bit 7); ddm is stored as int8
(x127, error below 0.004); classes is the cell-type map. The sidecar is keyed by the target
parameters, so changing them computes new targets instead of reusing stale ones.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cellgap.core.progress import progress_bar
from cellgap.decoder.targets import TargetConfig, compute_targets
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.reader import FeatureStore
from cellgap.featurestore.store.sidecar import Sidecar, open_sidecar

log = logging.getLogger(__name__)
DDM_SCALE = 127.0
NEAR_BIT = np.uint8(128)
TARGETS_VERSION = 1


@dataclass
class TargetBatch:
    """Targets of a batch: sm1 (B,H,W) int64-able, ddm (B,4,H,W) float32, classes (B,H,W), near (B,H,W) bool."""

    sm1: np.ndarray
    ddm: np.ndarray
    classes: np.ndarray
    near: np.ndarray


def target_config_for(store: FeatureStore) -> TargetConfig:
    magnification = store.magnification
    return TargetConfig.for_magnification(20 if magnification == 20 else 40)


def encode_targets(instances: np.ndarray, classes: np.ndarray, config: TargetConfig) -> dict[str, np.ndarray]:
    """Stored form of one tile's targets."""
    targets = compute_targets(instances, classes, config)
    near = targets.weight >= 1.0
    return {
        "sm1": targets.sm1.astype(np.uint8) | (near.astype(np.uint8) * NEAR_BIT),
        "ddm": np.rint(targets.ddm * DDM_SCALE).astype(np.int8),
        "classes": targets.classes.astype(np.uint8),
    }


class TargetCache:
    """Reads (and on first use computes) the targets of a store's labelled tiles."""

    def __init__(self, store: FeatureStore, config: TargetConfig) -> None:
        if not store.manifest.dataset.has_labels:
            from cellgap.decoder.errors import DecoderError

            raise DecoderError(f"{store.location}: the store has no labels to train on (an inference-only data set)")
        self.store, self.config = store, config
        tile = store.manifest.dataset.tile_size
        self.sidecar: Sidecar = open_sidecar(
            store.location, "targets", {"version": TARGETS_VERSION, "ddm_scale": DDM_SCALE, **config.model_dump()},
            {"sm1": ((tile, tile), "uint8"), "ddm": ((4, tile, tile), "int8"), "classes": ((tile, tile), "uint8")},
            store.n_tiles, store.manifest.storage.shard_tiles)

    def ensure(self, indices: np.ndarray, threads: int = 2, progress: bool = True) -> None:
        """Compute the targets of any of these tiles that are not cached yet."""
        shards = self.sidecar.pending_shards(np.asarray(indices))
        if not shards:
            return
        with progress_bar(len(shards), "targets", unit="shard", enabled=progress) as bar, \
                ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(self._compute_shard, shards):
                bar.update(1)

    def _compute_shard(self, shard: int) -> None:
        tiles = layout.shard_range(shard, self.store.n_tiles, self.store.manifest.storage.shard_tiles)
        indices = np.arange(tiles.start, tiles.stop)
        done = self.store.done[indices]
        instances, classes = self.store.read_labels(indices)
        parts = [encode_targets(instances[i], classes[i], self.config) if done[i] else None for i in range(len(indices))]
        blank = encode_targets(np.zeros_like(instances[0]), np.zeros_like(classes[0]), self.config)
        self.sidecar.write_shard(shard, {k: np.stack([(p or blank)[k] for p in parts]) for k in blank}, done=done)

    def read(self, indices: np.ndarray) -> TargetBatch:
        sm1 = self.sidecar.read("sm1", indices)
        return TargetBatch(
            sm1=sm1 & np.uint8(3),
            ddm=self.sidecar.read("ddm", indices).astype(np.float32) / DDM_SCALE,
            classes=self.sidecar.read("classes", indices),
            near=(sm1 & NEAR_BIT) > 0,
        )
