"""Creating a store and writing whole shards of tiles; `done` is written last, after an fsync.

A shard is written in one piece (never read-modify-write), by exactly one writer, and its tiles
are marked done only once its data is durable, so an interrupted run (Ctrl-C, kill -9) leaves
every tile either complete or pending.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash
import zarr

from cellgap.featurestore.datasets.base import TileMeta
from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.arrays import (
    array_at,
    create_array,
    fsync_paths,
    is_raw_chunked,
    local_root,
    read_all,
    shard_file,
    shard_layout,
)
from cellgap.featurestore.store.location import open_group
from cellgap.featurestore.store.manifest import ATTRIBUTE, Manifest, check_compatible, parse_manifest
from cellgap.featurestore.store.quantize import encode_features
from cellgap.featurestore.store.shardfile import (
    ShardBuffer,
    ShardBufferPool,
    ShardLayout,
    fsync_folder,
    write_chunk_file,
    write_shard_file,
)

log = logging.getLogger(__name__)
CREATING = "cellgap_creating"
_IO_THREADS = 4  # concurrent array writes of one shard


@dataclass
class FeatureShard:
    """One layer's stored values for a whole shard in file memory, filled by the encoder: features in the
    stored dtype, and int8 scales beside them when the store quantises."""

    values: ShardBuffer
    scales: ShardBuffer | None


@dataclass
class ShardData:
    """Everything one shard's tiles contribute to the store, as consecutive parts (the batches they were
    encoded in): images (n,H,W,3), labels (n,H,W), features (n,C,h,w) per (view, layer), either float
    parts or a `FeatureShard` already holding the stored values (see `StoreWriter.feature_buffer`)."""

    shard: int
    images: list[np.ndarray]
    instances: list[np.ndarray] | None
    classes: list[np.ndarray] | None
    hashes: list[np.ndarray]  # pixel_hashes of each image part, taken by the reader while the tiles are cached
    features: dict[tuple[str, str], list[np.ndarray] | FeatureShard] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return sum(len(part) for part in self.images)

    @property
    def tile_hashes(self) -> np.ndarray:
        return np.concatenate(self.hashes)


_DIGESTS: dict[str, Callable[[memoryview], bytes]] = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "xxh3_128": xxhash.xxh3_128_digest,  # canonical (big-endian) bytes: its hex is xxh3_128_hexdigest
}


def pixel_hashes(images: np.ndarray, algorithm: str) -> np.ndarray:
    """Each tile's pixel hash, (n, bytes) uint8. Cheapest right after the tiles were read, while their bytes
    are still in the cache."""
    digest = _DIGESTS[algorithm]
    out = np.empty((len(images), layout.PIXEL_HASH_BYTES[algorithm]), np.uint8)
    for row, image in enumerate(images):
        out[row] = np.frombuffer(digest(np.ascontiguousarray(image).data), np.uint8)
    return out


def new_io_pool(writers: int = 1) -> ThreadPoolExecutor:
    """Threads for the array writes of `writers` shards written at once (see `StoreWriter.write_shard`)."""
    return ThreadPoolExecutor(max_workers=_IO_THREADS * writers, thread_name_prefix="cellgap-io")


def pixel_fingerprint(hashes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(hashes).tobytes()).hexdigest()


class StoreWriter:
    """Writes shards into an existing store whose manifest matches the job."""

    def __init__(self, group: zarr.Group, manifest: Manifest, where: str) -> None:
        self.group, self.manifest, self.where = group, manifest, where
        self.n_tiles = manifest.dataset.n_tiles
        self.shard_tiles = manifest.storage.shard_tiles
        self._root = local_root(group)
        self._arrays: dict[str, zarr.Array] = {}  # each lookup reads metadata through zarr's event loop thread
        self._hash_path = layout.pixel_hash_path(manifest.pixel_hash)
        for path in [*_sharded_paths(manifest), layout.DONE, self._hash_path]:
            try:
                self._arrays[path] = array_at(group, path)
            except KeyError:  # e.g. no label arrays in an inference-only store, no scales without int8
                continue
        self._layouts: dict[str, ShardLayout] = {}
        for path, array in self._arrays.items():
            found = shard_layout(array)
            if found is not None:
                self._layouts[path] = found
        self._raw_chunked = {p for p in (layout.DONE, self._hash_path) if p in self._arrays
                             and is_raw_chunked(self._arrays[p])}
        self._buffers = ShardBufferPool()

    def _array(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            self._arrays[path] = array_at(self.group, path)
        return self._arrays[path]

    @property
    def n_shards(self) -> int:
        return layout.shard_count(self.n_tiles, self.shard_tiles)

    def done_mask(self) -> np.ndarray:
        return read_all(self.group, layout.DONE).astype(bool)

    def pending_shards(self) -> list[int]:
        """Shards with any tile not done; they are (re)written whole."""
        done = self.done_mask()
        return [s for s in range(self.n_shards)
                if not done[layout.shard_range(s, self.n_tiles, self.shard_tiles).start:
                            layout.shard_range(s, self.n_tiles, self.shard_tiles).stop].all()]

    def feature_buffer(self, shard: int, view: str, layer: str) -> FeatureShard | None:
        """Memory for one layer's stored values of a shard, which the encoder fills and the writer writes as it is,
        where the store's own raw shard layout on a local disk allows it (else None: hand over float parts)."""
        values = self._layouts.get(layout.feature_path(layer, view))
        scales = self._layouts.get(layout.scale_path(layer, view))
        int8 = self.manifest.storage.dtype == "int8"
        if self._root is None or values is None or not values.raw or (int8 and scales is None):
            return None
        n_tiles = len(layout.shard_range(shard, self.n_tiles, self.shard_tiles))
        scale_buffer = self._buffers.take(scales, n_tiles) if int8 and scales is not None else None
        return FeatureShard(self._buffers.take(values, n_tiles), scale_buffer)

    def write_shard(self, data: ShardData, io: Executor | None = None) -> None:
        """Write, fsync and mark done one whole shard. `io` runs its array writes in parallel (a pool kept for
        the whole job saves starting threads per shard); without one, a pool lives for this shard only."""
        if io is None:
            with new_io_pool() as pool:
                self.write_shard(data, pool)
            return
        tiles = layout.shard_range(data.shard, self.n_tiles, self.shard_tiles)
        if data.n_tiles != len(tiles):
            raise StoreError(f"shard {data.shard}: {data.n_tiles} tiles given, {len(tiles)} expected")
        values: dict[str, list[np.ndarray] | ShardBuffer] = {layout.IMAGE: data.images,
                                                            self._hash_path: [data.tile_hashes]}
        if self.manifest.dataset.has_labels:
            if data.instances is None or data.classes is None:
                raise StoreError(f"shard {data.shard}: labels missing for a labelled data set")
            values[layout.INSTANCES] = data.instances
            values[layout.CLASSES] = data.classes
        for view in self.manifest.storage.views:
            for layer in self.manifest.encoder.layers:
                given = data.features[(view, layer.name)]
                if isinstance(given, FeatureShard):
                    values[layout.feature_path(layer.name, view)] = given.values
                    if given.scales is not None:
                        values[layout.scale_path(layer.name, view)] = given.scales
                    continue
                encoded = [encode_features(part, self.manifest.storage.dtype) for part in given]
                values[layout.feature_path(layer.name, view)] = [stored for stored, _ in encoded]
                if self.manifest.storage.dtype == "int8":  # every int8 part has its scales
                    values[layout.scale_path(layer.name, view)] = [scale for _, scale in encoded if scale is not None]
        # arrays in parallel: their writes and fsyncs wait on the disk, not on the CPU
        list(io.map(lambda item: self._write(item[0], data.shard, item[1]), values.items()))
        self._sync(list(values), data.shard, io)
        self._write(layout.DONE, data.shard, [np.ones(len(tiles), np.uint8)])
        self._sync([layout.DONE], data.shard)
        for written in values.values():
            if isinstance(written, ShardBuffer):
                self._buffers.give(written)  # its file is durable; the memory serves a later shard

    def _write(self, path: str, shard: int, parts: list[np.ndarray] | ShardBuffer) -> None:
        """One array's part of a shard: our direct shard or chunk file where the layout allows, else zarr-python."""
        array = self._array(path)
        shard_layout = self._layouts.get(path)
        if self._root is not None and shard_layout is not None:
            write_shard_file(shard_file(self._root, array, shard), shard_layout, parts, self._buffers)
            return
        if isinstance(parts, ShardBuffer):
            parts = [parts.tiles]
        values = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self._root is not None and path in self._raw_chunked:
            write_chunk_file(shard_file(self._root, array, shard), tuple(array.chunks), np.dtype(array.dtype), values)
            return
        tiles = layout.shard_range(shard, self.n_tiles, self.shard_tiles)
        array[tiles.start : tiles.stop] = values

    def _sync(self, paths: Sequence[str], shard: int, pool: Executor | None = None) -> None:
        """Make a shard's files and the folders they were renamed into durable (local stores only)."""
        if self._root is None:
            return  # object stores make each write durable and atomic on their own
        files = [shard_file(self._root, self._array(p), shard) for p in paths]
        direct = set(self._layouts) | self._raw_chunked  # direct writes fsync their files themselves
        fsync_paths([f for p, f in zip(paths, files) if p not in direct])
        folders = {f.parent for f in files if f.exists()}
        list(pool.map(fsync_folder, folders) if pool is not None else map(fsync_folder, folders))

    def finalize(self) -> Manifest:
        """Record the pixel fingerprint once every tile is done; returns the (possibly updated) manifest."""
        if not self.done_mask().all() or self.manifest.pixels_sha256 is not None:
            return self.manifest
        hashes = read_all(self.group, self._hash_path)
        self.manifest = self.manifest.model_copy(update={"pixels_sha256": pixel_fingerprint(hashes)})
        self.group.attrs[ATTRIBUTE] = self.manifest.model_dump(mode="json")
        return self.manifest


def _sharded_paths(manifest: Manifest) -> list[str]:
    paths = [layout.IMAGE, layout.INSTANCES, layout.CLASSES]
    for view in manifest.storage.views:
        for layer in manifest.encoder.layers:
            paths += [layout.feature_path(layer.name, view), layout.scale_path(layer.name, view)]
    return paths


def _write_metadata(group: zarr.Group, metas: Sequence[TileMeta], shard_tiles: int) -> None:
    n_tiles = len(metas)
    chunk = (min(shard_tiles, n_tiles),)
    for path, values in ((layout.NAME, [m.name for m in metas]), (layout.SOURCE, [m.source for m in metas]),
                         (layout.TISSUE, [m.tissue for m in metas])):
        array = group.create_array(path, shape=(n_tiles,), chunks=chunk, dtype=str)
        array[:] = np.array(values, dtype=object)
    array_at(group, layout.SPLIT)[:] = np.array([layout.SPLIT_CODES[m.split] for m in metas], np.uint8)
    array_at(group, layout.ORIGIN)[:] = np.array([m.origin for m in metas], np.int32).reshape(n_tiles, 2)


def create_store(location: str, manifest: Manifest, metas: Sequence[TileMeta]) -> StoreWriter:
    """A new store with every array and the tile metadata; the manifest is written last."""
    group = open_group(location, mode="w")
    group.attrs[CREATING] = True
    shard_tiles = manifest.storage.shard_tiles
    specs = layout.tile_arrays(len(metas), manifest.dataset.tile_size, manifest.dataset.has_labels,
                               manifest.pixel_hash)
    layers = [(layer.name, layer.channels, layer.height, layer.width) for layer in manifest.encoder.layers]
    specs += layout.feature_arrays(len(metas), layers, manifest.storage.dtype, manifest.storage.codec,
                                   manifest.storage.views)
    for spec in specs:
        create_array(group, spec, shard_tiles)
    _write_metadata(group, metas, shard_tiles)
    group.attrs.update({ATTRIBUTE: manifest.model_dump(mode="json")})
    group.attrs.__delitem__(CREATING)
    return StoreWriter(group, manifest, location)


def open_or_create(location: str, manifest: Manifest, metas: Sequence[TileMeta]) -> tuple[StoreWriter, bool]:
    """Resume a compatible store or create a new one. Returns the writer and whether it already existed."""
    group = _existing_group(location)
    if group is None:
        return create_store(location, manifest, metas), False
    if CREATING in group.attrs or ATTRIBUTE not in group.attrs:
        if CREATING not in group.attrs:
            raise StoreError(f"{location}: exists and is not a cellgap store; choose another --store path")
        log.info("%s: an earlier run stopped while creating the store; creating it again", location)
        _remove(location)
        return create_store(location, manifest, metas), False
    stored = parse_manifest(group.attrs.asdict(), location)
    complete = layout.DONE in group and bool(read_all(group, layout.DONE).astype(bool).all())
    check_compatible(stored, manifest, location, writing=not complete)  # a complete store gets no new shards
    _remove_partial_files(location)
    return StoreWriter(open_group(location, mode="r+"), stored, location), True


def _existing_group(location: str) -> zarr.Group | None:
    """The group of a store already at `location`, or None where there is none yet."""
    if "://" not in location:
        path = Path(location)
        if not path.exists():
            return None
        if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").exists()):
            raise StoreError(f"{location}: exists and is not a cellgap store; choose another --store path")
        if not (path / "zarr.json").exists() or _only_an_empty_root(path):
            return None
    try:
        return open_group(location, mode="r")
    except FileNotFoundError:
        return None


def _only_an_empty_root(path: Path) -> bool:
    """A kill just after zarr wrote the root group, before its first attribute: nothing is stored yet."""
    if [child.name for child in path.iterdir()] != ["zarr.json"]:
        return False
    try:
        document = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return True  # cut off while zarr wrote it
    return isinstance(document, dict) and not document.get("attributes")


def _remove(location: str) -> None:
    if "://" in location:
        open_group(location, mode="w")  # overwriting a group clears it
    else:
        shutil.rmtree(location)


def _remove_partial_files(location: str) -> None:
    """Temporary files of writes cut short by a kill; the data they were meant to hold is rewritten."""
    if "://" in location:
        return
    for path in Path(location).rglob("*.partial"):
        path.unlink(missing_ok=True)
