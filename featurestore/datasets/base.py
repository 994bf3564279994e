"""What every data set reader yields: tiles with labels and metadata, and whole labelled images.

A reader is random-access (`len`, `[i]`) so that extraction can hand disjoint tile ranges to
parallel workers, and picklable (it holds paths, not open files) so that it can travel to them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

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
