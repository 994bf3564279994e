"""Derived per-tile arrays kept inside a store (e.g. a decoder's training targets), keyed by their parameters.

The feature store owns the mechanism (layout, shard files, completion marks); the package that
derives the values owns their meaning. A sidecar lives under `derived/<name>-<hash of params>` with
the parameters in its attributes, so changed parameters give a new sidecar instead of stale values.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.arrays import (
    array_at,
    create_array,
    fsync_paths,
    group_at,
    local_root,
    shard_file,
    shard_layout,
)
from cellgap.featurestore.store.layout import ArraySpec
from cellgap.featurestore.store.location import open_group
from cellgap.featurestore.store.reader import TileArray
from cellgap.featurestore.store.shardfile import fsync_folder, write_shard_file

DERIVED = "derived"


def sidecar_path(name: str, params: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{DERIVED}/{name}-{digest}"


class Sidecar:
    """Per-tile arrays (tile axis first) derived from a store, written shard by shard, read like the store's own."""

    def __init__(self, location: str, name: str, params: Mapping[str, Any],
                 arrays: Mapping[str, tuple[tuple[int, ...], str]], n_tiles: int, shard_tiles: int) -> None:
        self.location, self.params, self.arrays = location, dict(params), dict(arrays)
        self.n_tiles, self.shard_tiles = n_tiles, shard_tiles
        self.path = sidecar_path(name, self.params)
        group = open_group(location, mode="r+")
        if self.path in group:
            self.group = group_at(group, self.path)
            stored = cast(Mapping[str, Any], self.group.attrs.get("params", {}))  # written as a JSON object below
            if dict(stored) != json.loads(json.dumps(self.params, default=str)):
                raise StoreError(f"{location}/{self.path}: parameters differ from the requested ones")
        else:
            self.group = group.create_group(self.path, attributes={"params": json.loads(json.dumps(self.params, default=str))})
            for array_name, (tile_shape, dtype) in self.arrays.items():
                create_array(self.group, ArraySpec(array_name, (n_tiles,) + tuple(tile_shape), dtype, True, "none"),
                             shard_tiles)
            create_array(self.group, ArraySpec(layout.DONE, (n_tiles,), "uint8", False, "none"), shard_tiles)
        self._root = local_root(group)
        self._readers: dict[str, TileArray] = {}
        # looked up once: each lookup reads metadata through zarr's event loop thread
        self._arrays = {name: array_at(self.group, name) for name in [*self.arrays, layout.DONE]}
        self._layouts = {name: shard_layout(self._arrays[name]) for name in self.arrays}

    def done(self) -> np.ndarray:
        return np.asarray(self._arrays[layout.DONE][:]).astype(bool)

    def pending_shards(self, wanted: np.ndarray) -> list[int]:
        """Shards holding any wanted tile that is not done yet."""
        done = self.done()
        missing = np.asarray(wanted)[~done[np.asarray(wanted)]]
        return sorted(set((missing // self.shard_tiles).tolist()))

    def write_shard(self, shard: int, values: Mapping[str, np.ndarray], done: np.ndarray | None = None) -> None:
        """Write a whole shard; `done` (one bool per tile, default all) marks the tiles whose values are final,
        so tiles derived from data that was not there yet are computed again later."""
        tiles = layout.shard_range(shard, self.n_tiles, self.shard_tiles)
        for array_name in self.arrays:
            array = self._arrays[array_name]
            data = values[array_name]
            if len(data) != len(tiles):
                raise StoreError(f"{self.path}/{array_name}: {len(data)} tiles for shard {shard} of {len(tiles)}")
            found = self._layouts[array_name]
            if self._root is not None and found is not None:
                write_shard_file(shard_file(self._root, array, shard), found, data)
            else:
                array[tiles.start : tiles.stop] = data
        if self._root is not None:
            for folder in {shard_file(self._root, self._arrays[a], shard).parent for a in self.arrays}:
                fsync_folder(folder)
        marks = np.ones(len(tiles), np.uint8) if done is None else np.asarray(done, dtype=np.uint8)
        if marks.shape != (len(tiles),):
            raise StoreError(f"{self.path}: {marks.shape} done marks for shard {shard} of {len(tiles)} tiles")
        self._arrays[layout.DONE][tiles.start : tiles.stop] = marks
        self._readers.clear()  # cached readers map the replaced files
        if self._root is not None:
            fsync_paths([shard_file(self._root, self._arrays[layout.DONE], shard)])

    def read(self, array_name: str, indices: np.ndarray) -> np.ndarray:
        if array_name not in self._readers:
            self._readers[array_name] = TileArray(self._arrays[array_name], self._root)
        return self._readers[array_name].read(np.asarray(indices))


def open_sidecar(location: str, name: str, params: Mapping[str, Any], arrays: Mapping[str, tuple[tuple[int, ...], str]],
                 n_tiles: int, shard_tiles: int) -> Sidecar:
    """Create or reopen the sidecar for these parameters (the store must be writable)."""
    try:
        return Sidecar(location, name, params, arrays, n_tiles, shard_tiles)
    except (PermissionError, OSError) as error:
        raise StoreError(f"{location}: cannot write derived arrays into the store ({error}); copy the store to a "
                         "writable place") from None
