"""Creating zarr arrays from `ArraySpec`s and finding the files behind a shard (for fsync and fast reads)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.store.layout import ArraySpec
from cellgap.featurestore.store.shardfile import ShardLayout

if TYPE_CHECKING:
    from zarr.core.metadata import ArrayV3Metadata


def array_at(group: zarr.Group, path: str) -> zarr.Array:
    """The array at `path` of a store's group: zarr types every member as `Array | Group`, the layout says which."""
    return cast(zarr.Array, group[path])


def group_at(group: zarr.Group, path: str) -> zarr.Group:
    """The group at `path` of a store's group (see `array_at`)."""
    return cast(zarr.Group, group[path])


def read_all(group: zarr.Group, path: str) -> np.ndarray:
    """Every value of the array at `path`, as numpy."""
    return np.asarray(array_at(group, path)[:])


def metadata_v3(array: zarr.Array) -> ArrayV3Metadata:
    """An array's metadata: stores are zarr v3 (see `location.open_group`), whose metadata lists the codecs."""
    return cast("ArrayV3Metadata", array.metadata)


def compressors_for(codec: str) -> list | None:
    if codec == "none":
        return None
    if codec == "zstd":
        return [ZstdCodec(level=1)]
    if codec == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)]
    if codec == "lz4-shuffle":  # labels: mostly zeros and runs in the high bytes; half zstd-1's CPU per tile
        return [BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.shuffle)]
    raise StoreError(f"unknown codec {codec!r} (use none, zstd or blosc-lz4)")


_BLOSC_SHUFFLE = {BloscShuffle.noshuffle: 0, BloscShuffle.shuffle: 1, BloscShuffle.bitshuffle: 2}


def _numcodecs_config(codec: object, itemsize: int) -> tuple[tuple[str, object], ...] | None:
    """The numcodecs config that encodes an inner chunk byte for byte as zarr-python's codec does, or None
    for codecs the direct path does not take."""
    if isinstance(codec, ZstdCodec) and not codec.checksum:
        return (("id", "zstd"), ("level", codec.level))
    if isinstance(codec, BloscCodec):
        return (("blocksize", codec.blocksize), ("clevel", codec.clevel), ("cname", codec.cname.name),
                ("id", "blosc"), ("shuffle", _BLOSC_SHUFFLE[codec.shuffle]), ("typesize", codec.typesize or itemsize))
    return None


def tile_codecs(spec: ArraySpec) -> list | None:
    """Bytes-to-bytes codecs of one array: every tile of a sharded array ends with its own crc32c, so a damaged
    tile is refused on read (by zarr-python and the direct reader alike), never read as data."""
    compressors = compressors_for(spec.codec) or []
    if spec.sharded:
        compressors.append(Crc32cCodec())
    return compressors or None


def create_array(group: zarr.Group, spec: ArraySpec, shard_tiles: int) -> zarr.Array:
    """Sharded arrays get one inner chunk per tile; small per-tile arrays get one chunk per shard of tiles."""
    n_tiles = spec.shape[0]
    rest = spec.shape[1:]
    outer = (min(shard_tiles, n_tiles),) + rest
    if spec.sharded:
        chunks, shards = (1,) + rest, outer
    else:
        chunks, shards = outer, None
    compressors = tile_codecs(spec)
    return group.create_array(
        spec.path, shape=spec.shape, chunks=chunks, shards=shards, dtype=spec.dtype,
        compressors=compressors, fill_value=0, overwrite=False,
        # c.3.0.0 beside each other rather than c/3/0/0: no folders to create and fsync per shard
        chunk_key_encoding={"name": "default", "separator": "."},
    )


def local_root(group: zarr.Group) -> Path | None:
    """The directory of a store on the local file system, or None for other stores."""
    store = group.store
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root)
    return None


def shard_file(root: Path, array: zarr.Array, shard: int) -> Path:
    """The file that holds shard `shard` (outer chunk index along the tile axis) of an array."""
    coords = (shard,) + (0,) * (array.ndim - 1)
    return root / array.path / array.metadata.encode_chunk_key(coords)


def fsync_paths(paths: list[Path]) -> None:
    """Flush files to disk, so a `done` mark never outlives its data after a crash."""
    for path in paths:
        if not path.exists():  # all-fill chunks are not written at all
            continue
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def is_raw_chunked(array: zarr.Array) -> bool:
    """True for an unsharded array stored as raw little-endian chunks (no compressor): its chunk files are plain bytes."""
    from zarr.codecs import BytesCodec

    codecs = metadata_v3(array).codecs
    return (len(codecs) == 1 and isinstance(codecs[0], BytesCodec) and array.shards is None
            and np.dtype(array.dtype).byteorder in ("=", "<", "|"))


def shard_layout(array: zarr.Array) -> ShardLayout | None:
    """The direct-I/O description of an array made by `create_array` with per-tile inner chunks, else None."""
    from zarr.codecs import BytesCodec, ShardingCodec

    codecs = metadata_v3(array).codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner = list(sharding.codecs)
    checksummed = bool(inner) and isinstance(inner[-1], Crc32cCodec)
    if checksummed:
        inner = inner[:-1]
    if not inner or not isinstance(inner[0], BytesCodec) or len(inner) > 2:
        return None
    compression = None
    if len(inner) == 2:
        compression = _numcodecs_config(inner[1], np.dtype(array.dtype).itemsize)
        if compression is None:
            return None
    if [type(c) for c in sharding.index_codecs] != [BytesCodec, Crc32cCodec]:
        return None
    if sharding.index_location.value != "end" or tuple(sharding.chunk_shape) != (1,) + tuple(array.shape[1:]):
        return None
    if np.dtype(array.dtype).byteorder not in ("=", "<", "|"):
        return None
    shards = array.shards
    assert shards is not None  # zarr: a single sharding codec is what gives an array shards
    return ShardLayout(shard_tiles=int(shards[0]), tile_shape=tuple(array.shape[1:]),
                       dtype=np.dtype(array.dtype), compression=compression, checksummed=checksummed)
