"""PanNuke fold folders: images.npy (N,256,256,3) float 0..255, masks.npy (N,256,256,6), types.npy (N,)."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from cellgap.featurestore.datasets.base import DatasetInfo, LabelledImage, MetasOnce, Tile, TileMeta
from cellgap.featurestore.datasets.imageio import load_npy as load_npy_file
from cellgap.featurestore.datasets.imageio import to_rgb_uint8
from cellgap.featurestore.datasets.splitfile import read_split_file
from cellgap.featurestore.datasets.splits import stratified_group_split
from cellgap.featurestore.errors import DatasetError, DatasetNotFoundError

CLASS_NAMES: tuple[str, ...] = ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
MAGNIFICATION = 40


def load_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map a required .npy file (PanNuke folds are several GB), its header checked against the file."""
    return load_npy_file(path, what, mmap=True)


def combine_channels(masks: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One instance map with ids unique across the 5 class channels, and the class map.

    PanNuke reuses instance ids across channels; a later channel wins where two overlap, as
    PanNuke's own `binarize` does.
    """
    channels = np.asarray(masks[..., :5])
    if not np.isfinite(channels).all() or (channels < 0).any():
        raise DatasetError(f"{what}: masks hold negative or non-finite instance ids")
    instances = np.zeros(channels.shape[:2], np.int32)
    classes = np.zeros(channels.shape[:2], np.uint8)
    next_id = 1
    for channel in range(5):
        ids = channels[..., channel].astype(np.int64)
        present = np.unique(ids)
        present = present[present > 0]
        if present.size == 0:
            continue
        lookup = np.zeros(int(present.max()) + 1, np.int32)
        lookup[present] = np.arange(next_id, next_id + present.size, dtype=np.int32)
        inside = ids > 0
        instances[inside] = lookup[ids[inside]]
        classes[inside] = channel + 1
        next_id += present.size
    return instances, classes


class PanNukeDataset(MetasOnce):
    """A PanNuke fold as tiles. Its split comes from `folds.csv` when present, else seeded by tissue."""

    def __init__(self, root: Path, split_seed: int = 0, need_images: bool = True) -> None:
        self.root = root
        self.split_seed = split_seed
        if not root.is_dir():
            raise DatasetNotFoundError(f"{root}: PanNuke folder not found")
        self._need_images = need_images
        masks = self._masks
        if masks.ndim != 4 or masks.shape[-1] != 6:
            raise DatasetError(f"{root / 'masks.npy'}: expected shape (N,H,W,6), got {masks.shape}")
        if need_images:
            images = self._images
            if images.ndim != 4 or images.shape[-1] != 3:
                raise DatasetError(f"{root / 'images.npy'}: expected shape (N,H,W,3), got {images.shape}")
            if images.shape[:3] != masks.shape[:3]:
                raise DatasetError(
                    f"{root}: images.npy {images.shape[:3]} and masks.npy {masks.shape[:3]} disagree in count or size"
                )
        types = self.tissues
        if len(types) != masks.shape[0]:
            raise DatasetError(f"{root / 'types.npy'}: {len(types)} entries for {masks.shape[0]} images")

    @cached_property
    def _images(self) -> np.ndarray:
        return load_npy(self.root / "images.npy", "PanNuke images.npy")

    @cached_property
    def _masks(self) -> np.ndarray:
        return load_npy(self.root / "masks.npy", "PanNuke masks.npy")

    @cached_property
    def tissues(self) -> list[str]:
        path = self.root / "types.npy"
        if not path.is_file():
            return [""] * self._masks.shape[0]
        types = load_npy_file(path, "tissue types")
        if types.ndim != 1:
            raise DatasetError(f"{path}: expected shape (N,), got {types.shape}")
        return [str(t) for t in types]

    @cached_property
    def _split_file(self) -> list[str] | None:
        return read_split_file(self.root, self.names)  # parsed once, for the splits and for `info`

    @cached_property
    def _splits(self) -> list[str]:
        fixed = self._split_file
        if fixed is not None:
            return fixed
        return stratified_group_split(self.names, self.tissues, self.split_seed)

    @cached_property
    def names(self) -> list[str]:
        return [f"{i:05d}" for i in range(self._masks.shape[0])]  # built once: evaluation asks per image

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    @property
    def info(self) -> DatasetInfo:
        own_split = self._split_file is not None
        return DatasetInfo(
            format="pannuke",
            path=str(self.root.resolve()),
            class_names=CLASS_NAMES,
            magnification=MAGNIFICATION,
            has_labels=True,
            tile_size=int(self._masks.shape[1]),
            split_policy="dataset" if own_split else f"seeded-stratified(seed={self.split_seed},by=tissue)",
        )

    def __len__(self) -> int:
        return int(self._masks.shape[0])

    def list_metas(self) -> list[TileMeta]:
        return [
            TileMeta(name=name, source=f"images.npy[{i}]", split=split, tissue=tissue)
            for i, (name, split, tissue) in enumerate(zip(self.names, self._splits, self.tissues))
        ]

    def __getitem__(self, index: int) -> Tile:
        instances, classes = combine_channels(self._masks[index], f"{self.root / 'masks.npy'}[{index}]")
        image = to_rgb_uint8(np.asarray(self._images[index]), f"{self.root / 'images.npy'}[{index}]")
        return Tile(image=image, instances=instances, classes=classes, meta=self.metas()[index])


    def labelled(self, index: int) -> LabelledImage:
        instances, classes = combine_channels(self._masks[index], f"{self.root / 'masks.npy'}[{index}]")
        return LabelledImage(name=self.names[index], instances=instances, classes=classes, tissue=self.tissues[index])

    def __getstate__(self) -> dict:
        # memory maps and cached lists are rebuilt in the receiving process
        return {"root": self.root, "split_seed": self.split_seed, "_need_images": self._need_images}
