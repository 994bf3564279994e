"""Names, shapes and chunking of every array in a store: the one place that defines the layout.

One tile of one array is one inner chunk; `shard_tiles` consecutive tiles form one shard (one file
per array), and a shard is the unit of work: no two writers ever touch one shard.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE = "tiles/image"
INSTANCES = "tiles/instances"
CLASSES = "tiles/classes"
NAME = "meta/name"
SOURCE = "meta/source"
TISSUE = "meta/tissue"
SPLIT = "meta/split"
ORIGIN = "meta/origin"
DONE = "done"
FEATURES = "features"
VIEWS = "views"

# Bytes per tile of each pixel hash a store may hold. xxh3_128 is the default: sha256 took 3.3 ms of CPU per
# 32 tiles beside a CPU encoder (xxh3: 0.4 ms); the hash detects changed pixels, it does not guard against forgery.
PIXEL_HASH_BYTES: dict[str, int] = {"sha256": 32, "xxh3_128": 16}
SPLIT_CODES: dict[str, int] = {"": 0, "train": 1, "valid": 2, "test": 3}
SPLIT_NAMES: dict[int, str] = {code: name for name, code in SPLIT_CODES.items()}


def pixel_hash_path(algorithm: str) -> str:
    """Array path of each tile's pixel hash; named by its algorithm (stores before xxh3 hold sha256)."""
    return f"meta/pixel_{algorithm}"


def feature_path(layer: str, view: str = "identity") -> str:
    """Array path of one layer's features for one view (the identity view lives under features/)."""
    return f"{FEATURES}/{layer}" if view == "identity" else f"{VIEWS}/{view}/{layer}"


def scale_path(layer: str, view: str = "identity") -> str:
    """Per-tile, per-channel scales beside an int8 feature array."""
    return feature_path(layer, view) + "_scale"


@dataclass(frozen=True)
class ArraySpec:
    """How one array is created."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    sharded: bool  # per-tile inner chunks grouped in shards, or one chunk per shard of tiles
    codec: str  # none | zstd | blosc-lz4 (features), lz4-shuffle (labels)


def shard_count(n_tiles: int, shard_tiles: int) -> int:
    return -(-n_tiles // shard_tiles)


def shard_range(shard: int, n_tiles: int, shard_tiles: int) -> range:
    """Tile indices of one shard (the last one may be short)."""
    return range(shard * shard_tiles, min(n_tiles, (shard + 1) * shard_tiles))


def tile_arrays(n_tiles: int, tile_size: int, with_labels: bool, pixel_hash: str) -> list[ArraySpec]:
    """Image, labels and per-tile metadata arrays."""
    specs = [
        ArraySpec(IMAGE, (n_tiles, tile_size, tile_size, 3), "uint8", True, "none"),
        ArraySpec(SPLIT, (n_tiles,), "uint8", False, "zstd"),
        ArraySpec(ORIGIN, (n_tiles, 2), "int32", False, "zstd"),
        ArraySpec(pixel_hash_path(pixel_hash), (n_tiles, PIXEL_HASH_BYTES[pixel_hash]), "uint8", False, "none"),
        ArraySpec(DONE, (n_tiles,), "uint8", False, "none"),
    ]
    if with_labels:
        specs += [
            ArraySpec(INSTANCES, (n_tiles, tile_size, tile_size), "int32", True, "lz4-shuffle"),
            ArraySpec(CLASSES, (n_tiles, tile_size, tile_size), "uint8", True, "lz4-shuffle"),
        ]
    return specs


def feature_arrays(n_tiles: int, layers: list[tuple[str, int, int, int]], dtype: str, codec: str,
                   views: tuple[str, ...]) -> list[ArraySpec]:
    """One array per (view, layer) shaped (N,C,h,w), plus (N,C) scales for int8."""
    specs = []
    for view in views:
        for name, channels, height, width in layers:
            specs.append(ArraySpec(feature_path(name, view), (n_tiles, channels, height, width), dtype, True, codec))
            if dtype == "int8":
                specs.append(ArraySpec(scale_path(name, view), (n_tiles, channels), "float32", True, "none"))
    return specs
