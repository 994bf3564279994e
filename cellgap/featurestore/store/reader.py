"""The read API the decoder uses: open a store, list layers and splits, read batches of tiles fast.

Features and images of the default layout are read through `ShardFileReader` (memory-mapped shard
files, about as fast as a numpy memmap); other layouts and object stores go through zarr, reading
contiguous runs of tiles in one call each.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from cellgap.featurestore.encoders.description import EncoderDescription, LayerInfo
from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.arrays import array_at, local_root, read_all, shard_layout
from cellgap.featurestore.store.consistency import check_arrays
from cellgap.featurestore.store.location import open_group
from cellgap.featurestore.store.manifest import ASSUMED_MAGNIFICATION, Manifest, check_encoder, parse_manifest
from cellgap.featurestore.store.quantize import dequantize_int8
from cellgap.featurestore.store.shardfile import ShardFileReader

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Tiles read together: images (B,H,W,3) uint8, labels (B,H,W), features per layer (B,C,h,w)."""

    indices: np.ndarray
    images: np.ndarray | None
    instances: np.ndarray | None
    classes: np.ndarray | None
    features: dict[str, np.ndarray]


def contiguous_runs(indices: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Sorted unique indices grouped into (start, stop, positions-in-request) runs."""
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    runs, start = [], 0
    for k in range(1, len(ordered) + 1):
        if k == len(ordered) or ordered[k] != ordered[k - 1] + 1:
            runs.append((int(ordered[start]), int(ordered[k - 1]) + 1, order[start:k]))
            start = k
    return runs


class TileArray:
    """Reads tiles of one array by index, choosing the memory-mapped path when the layout allows."""

    def __init__(self, array: zarr.Array, root: Path | None) -> None:
        self.array = array
        self.fast: ShardFileReader | None = None
        found = shard_layout(array) if root is not None else None
        if root is not None and found is not None:
            self.fast = ShardFileReader(
                root / array.path, lambda s: array.metadata.encode_chunk_key((s,) + (0,) * (array.ndim - 1)),
                array.shape[0], found)

    def read(self, indices: np.ndarray) -> np.ndarray:
        if self.fast is not None:
            return self.fast.read(indices)
        out = np.empty((len(indices),) + tuple(self.array.shape[1:]), np.dtype(self.array.dtype))
        for start, stop, positions in contiguous_runs(indices):
            block = np.asarray(self.array[start:stop])
            out[positions] = block[np.asarray(indices)[positions] - start]
        return out


class FeatureStore:
    """A read-only view of a store; check `manifest` for what it holds."""

    def __init__(self, location: str, group: zarr.Group, manifest: Manifest) -> None:
        self.location, self.group, self.manifest = location, group, manifest
        self._root = local_root(group)

    @property
    def n_tiles(self) -> int:
        return self.manifest.dataset.n_tiles

    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        return self.manifest.encoder.layers

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.dataset.class_names

    @property
    def views(self) -> tuple[str, ...]:
        return self.manifest.storage.views

    @cached_property
    def magnification(self) -> int:
        """The magnification the stages below use; said once when the store only assumed it."""
        dataset = self.manifest.dataset
        if self.magnification_assumed:
            log.warning("%s: the store's magnification is unknown; assuming %dx for targets, post-processing and "
                        "F1_d (extract with --magnification 20|40 to say it)", self.location, ASSUMED_MAGNIFICATION)
            return dataset.magnification or ASSUMED_MAGNIFICATION
        assert dataset.magnification is not None  # not assumed: the store says it
        return dataset.magnification

    @property
    def magnification_assumed(self) -> bool:
        return self.manifest.dataset.magnification is None or self.manifest.dataset.magnification_source == "assumed"

    @cached_property
    def done(self) -> np.ndarray:
        return read_all(self.group, layout.DONE).astype(bool)

    @cached_property
    def splits(self) -> np.ndarray:
        """Split name per tile ('' when the data set is unsplit)."""
        codes = read_all(self.group, layout.SPLIT)
        return np.array([layout.SPLIT_NAMES[int(c)] for c in codes], dtype=object)

    @cached_property
    def names(self) -> list[str]:
        return [str(n) for n in read_all(self.group, layout.NAME)]

    @cached_property
    def tissues(self) -> list[str]:
        return [str(t) for t in read_all(self.group, layout.TISSUE)]

    @cached_property
    def sources(self) -> list[str]:
        return [str(s) for s in read_all(self.group, layout.SOURCE)]

    @cached_property
    def origins(self) -> np.ndarray:
        return read_all(self.group, layout.ORIGIN)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Completed tiles, optionally of one split ('train', 'valid', 'test', or '' for unsplit)."""
        mask = self.done.copy()
        if split is not None:
            if split not in layout.SPLIT_CODES:
                raise StoreError(f"unknown split {split!r} (use train, valid or test)")
            mask &= self.splits == split
        return np.flatnonzero(mask)

    def split_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.splits[self.done], return_counts=True)
        return {str(n) or "unsplit": int(c) for n, c in zip(names, counts)}

    @cached_property
    def _layers(self) -> frozenset[str]:
        return frozenset(self.manifest.layer_names)  # checked on every read: the manifest builds a list each time

    def _tile_array(self, path: str) -> TileArray:
        cache = self.__dict__.setdefault("_arrays", {})
        if path not in cache:
            cache[path] = TileArray(array_at(self.group, path), self._root)
        return cache[path]

    def read_images(self, indices: np.ndarray) -> np.ndarray:
        return self._tile_array(layout.IMAGE).read(np.asarray(indices))

    def read_labels(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.manifest.dataset.has_labels:
            raise StoreError(f"{self.location}: this store holds no labels (an inference-only data set)")
        indices = np.asarray(indices)
        return self._tile_array(layout.INSTANCES).read(indices), self._tile_array(layout.CLASSES).read(indices)

    def read_features(self, indices: np.ndarray, layer: str, view: str = "identity", dtype: str = "float32") -> np.ndarray:
        """(B,C,h,w) features of one layer; int8 stores are dequantised with their scales."""
        if layer not in self._layers:
            raise StoreError(f"{self.location}: no layer {layer!r} (has {', '.join(self.manifest.layer_names)})")
        if view not in self.views:
            raise StoreError(f"{self.location}: no view {view!r} (has {', '.join(self.views)})")
        indices = np.asarray(indices)
        values = self._tile_array(layout.feature_path(layer, view)).read(indices)
        if self.manifest.storage.dtype == "int8":
            scale = self._tile_array(layout.scale_path(layer, view)).read(indices)
            return dequantize_int8(values, scale, dtype)
        return values.astype(dtype, copy=False)

    def read_stored_features(self, indices: np.ndarray, layer: str, view: str = "identity"
                             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored values and, for int8, their (B,C) scales: lets a GPU loader dequantise on the device."""
        if layer not in self._layers or view not in self.views:
            raise StoreError(f"{self.location}: no layer {layer!r} in view {view!r}")
        indices = np.asarray(indices)
        values = self._tile_array(layout.feature_path(layer, view)).read(indices)
        if self.manifest.storage.dtype == "int8":
            return values, self._tile_array(layout.scale_path(layer, view)).read(indices)
        return values, None

    def read_batch(self, indices: np.ndarray, *, images: bool = True, labels: bool = True, features: bool = True,
                   view: str = "identity", dtype: str = "float32") -> Batch:
        """Everything the decoder needs for a batch, in the order of `indices`."""
        indices = np.asarray(indices, dtype=np.int64)
        instances = classes = None
        if labels and self.manifest.dataset.has_labels:
            instances, classes = self.read_labels(indices)
        return Batch(
            indices=indices,
            images=self.read_images(indices) if images else None,
            instances=instances,
            classes=classes,
            features={name: self.read_features(indices, name, view, dtype) for name in self.manifest.layer_names}
            if features else {},
        )


def open_store(location: str, *, expect_encoder: EncoderDescription | None = None) -> FeatureStore:
    """Open a store read-only and check its manifest (and, if given, that its encoder is the expected one)."""
    group = open_group(str(location), mode="r")
    manifest = parse_manifest(group.attrs.asdict(), str(location))
    check_arrays(group, manifest, str(location))
    if expect_encoder is not None:
        check_encoder(manifest, expect_encoder, str(location))
    return FeatureStore(str(location), group, manifest)
