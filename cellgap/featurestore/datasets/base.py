"""What every data set reader yields: tiles with labels and metadata, and whole labelled images.

A reader is random-access (`len`, `[i]`) so that extraction can hand disjoint tile ranges to
parallel workers, and picklable (it holds paths, not open files) so that it can travel to them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from cellgap.featurestore.errors import DatasetError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
UNSPLIT = ""


@dataclass(frozen=True)
class TileMeta:
    """Where a tile comes from. `name` is unique within a data set."""

    name: str
    source: str
    split: str = UNSPLIT
    tissue: str = ""
    origin: tuple[int, int] = (0, 0)  # (row, column) of the tile's top-left corner in its source image


@dataclass(frozen=True)
class Tile:
    """One tile: image (H,W,3) uint8, instances (H,W) int32 with 0 = background, classes (H,W) uint8.

    `instances`/`classes` are None for unlabelled images (inference-only stores); `classes` is None
    for data sets without cell types.
    """

    image: np.ndarray
    instances: np.ndarray | None
    classes: np.ndarray | None
    meta: TileMeta


@dataclass(frozen=True)
class TileBatch:
    """Consecutive tiles stacked: images (n,H,W,3) uint8, instances (n,H,W) int32, classes (n,H,W) uint8."""

    images: np.ndarray
    instances: np.ndarray | None
    classes: np.ndarray | None


@dataclass(frozen=True)
class LabelledImage:
    """A whole ground-truth or predicted image as `cellgap evaluate` compares them."""

    name: str
    instances: np.ndarray  # (H,W) int32, 0 = background, ids need not be contiguous
    classes: np.ndarray | None  # (H,W) uint8 class per pixel (0 = background), None when untyped
    tissue: str = ""


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a data set that travel into the store's manifest."""

    format: str
    path: str
    class_names: tuple[str, ...]  # class_names[k-1] is the name of class id k
    magnification: int | None
    has_labels: bool
    tile_size: int
    split_policy: str  # "dataset" (its own split) or "seeded-stratified(seed=..., by=...)"
    extra: dict[str, str] = field(default_factory=dict)
    mpp: float | None = None  # microns per pixel of the tiles, where the data set knows it (slides)


class MetasOnce:
    """A reader whose tile metadata is listed once and then shared by `metas()` and its tiles; readers
    write `list_metas()`."""

    def list_metas(self) -> list[TileMeta]:
        raise NotImplementedError

    def metas(self) -> list[TileMeta]:
        listed: list[TileMeta] | None = self.__dict__.get("_metas")
        if listed is None:
            listed = self.__dict__["_metas"] = self.list_metas()
        return listed


@runtime_checkable
class TileDataset(Protocol):
    """Random access to a data set's tiles, all of one size."""

    @property
    def info(self) -> DatasetInfo: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Tile: ...

    def metas(self) -> Sequence[TileMeta]:
        """Metadata of every tile, without reading pixels (used to plan splits and shards)."""
        ...


@runtime_checkable
class LabelSource(Protocol):
    """Whole labelled images in a fixed order (ground truth or predictions for evaluation)."""

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def names(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> LabelledImage: ...


def read_tiles(dataset: TileDataset, start: int, stop: int, tile_size: int) -> TileBatch:
    """Tiles start..stop-1 stacked, each checked to be (tile_size, tile_size, 3).

    Readers backed by one array offer `read_batch` (a slice instead of per-tile copies and checks,
    which a small CPU encoder would otherwise wait on; None where it does not apply); others are
    read tile by tile. Untyped labels come back with `classes` None, as from a single tile.
    """
    expected = (tile_size, tile_size, 3)
    batch_reader = getattr(dataset, "read_batch", None)
    batch = batch_reader(start, stop) if batch_reader is not None else None
    if batch is not None:
        if batch.images.shape[1:] != expected:
            raise DatasetError(f"tile {dataset.metas()[start].name}: image is {batch.images.shape[1:]}, "
                               f"expected {expected}")
        return batch
    tiles = [dataset[i] for i in range(start, stop)]
    for tile in tiles:
        if tile.image.shape != expected:
            raise DatasetError(f"tile {tile.meta.name}: image is {tile.image.shape}, expected {expected}")

    def stacked(field: str) -> np.ndarray | None:
        values = [getattr(t, field) for t in tiles]
        return None if any(v is None for v in values) else np.stack(values)

    return TileBatch(images=np.stack([t.image for t in tiles]), instances=stacked("instances"),
                     classes=stacked("classes"))
