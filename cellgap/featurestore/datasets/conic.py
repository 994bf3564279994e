"""CoNIC: images.npy (N,256,256,3) uint8, labels.npy (N,256,256,2) (instances, classes 0..6)."""
from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path

import numpy as np

from cellgap.featurestore.datasets.base import DatasetInfo, LabelledImage, MetasOnce, Tile, TileBatch, TileMeta
from cellgap.featurestore.datasets.imageio import as_classes, as_instances, to_rgb_uint8
from cellgap.featurestore.datasets.pannuke import load_npy
from cellgap.featurestore.datasets.splitfile import read_split_file
from cellgap.featurestore.datasets.splits import stratified_group_split
from cellgap.featurestore.errors import DatasetError

CLASS_NAMES: tuple[str, ...] = ("Neutrophil", "Epithelial", "Lymphocyte", "Plasma", "Eosinophil", "Connective")
MAGNIFICATION = 20


class CoNICDataset(MetasOnce):
    """CoNIC patches. `patch_info.csv` (e.g. `consep_1-0000`) gives source images and cohorts."""

    def __init__(self, root: Path, split_seed: int = 0, need_images: bool = True) -> None:
        self.root = root
        self.split_seed = split_seed
        self._need_images = need_images
        labels = self._labels
        if labels.ndim != 4 or labels.shape[-1] != 2:
            raise DatasetError(f"{root / 'labels.npy'}: expected shape (N,H,W,2), got {labels.shape}")
        if need_images:
            images = self._images
            if images.ndim != 4 or images.shape[-1] != 3:
                raise DatasetError(f"{root / 'images.npy'}: expected shape (N,H,W,3), got {images.shape}")
            if images.shape[:3] != labels.shape[:3]:
                raise DatasetError(
                    f"{root}: images.npy {images.shape[:3]} and labels.npy {labels.shape[:3]} disagree in count or size"
                )
        if len(self.patch_names) != labels.shape[0]:
            raise DatasetError(f"{root / 'patch_info.csv'}: {len(self.patch_names)} rows for {labels.shape[0]} patches")

    @cached_property
    def _images(self) -> np.ndarray:
        return load_npy(self.root / "images.npy", "CoNIC images.npy")

    @cached_property
    def _labels(self) -> np.ndarray:
        return load_npy(self.root / "labels.npy", "CoNIC labels.npy")

    @cached_property
    def patch_names(self) -> list[str]:
        path = self.root / "patch_info.csv"
        if not path.is_file():
            return [f"{i:05d}" for i in range(self._labels.shape[0])]
        try:
            with path.open(newline="") as handle:
                rows = [r for r in csv.reader(handle) if r]
        except (OSError, csv.Error, UnicodeDecodeError) as error:
            raise DatasetError(f"{path}: cannot read ({error})") from None
        if rows and rows[0][0].strip().lower() in ("patch_info", "name", "patch"):
            rows = rows[1:]
        return [r[0].strip() for r in rows]

    @property
    def names(self) -> list[str]:
        return self.patch_names

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def _source(self, name: str) -> str:
        return name.rsplit("-", 1)[0] if "-" in name else name

    def _cohort(self, name: str) -> str:
        return self._source(name).split("_", 1)[0] if (self.root / "patch_info.csv").is_file() else ""

    @cached_property
    def _split_file(self) -> list[str] | None:
        return read_split_file(self.root, self.names)  # parsed once, for the splits and for `info`

    @cached_property
    def _splits(self) -> list[str]:
        fixed = self._split_file
        if fixed is not None:
            return fixed
        return stratified_group_split([self._source(n) for n in self.names], [self._cohort(n) for n in self.names],
                                      self.split_seed)

    @property
    def info(self) -> DatasetInfo:
        own_split = self._split_file is not None
        return DatasetInfo(
            format="conic",
            path=str(self.root.resolve()),
            class_names=CLASS_NAMES,
            magnification=MAGNIFICATION,
            has_labels=True,
            tile_size=int(self._labels.shape[1]),
            split_policy="dataset" if own_split else f"seeded-stratified(seed={self.split_seed},by=cohort,group=source)",
        )

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def list_metas(self) -> list[TileMeta]:
        return [
            TileMeta(name=n, source=self._source(n), split=s, tissue=self._cohort(n))
            for n, s in zip(self.names, self._splits)
        ]


    def _label_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        what = f"{self.root / 'labels.npy'}[{index}]"
        label = np.asarray(self._labels[index])
        return as_instances(label[..., 0], what), as_classes(label[..., 1], what)

    def __getitem__(self, index: int) -> Tile:
        instances, classes = self._label_pair(index)
        image = to_rgb_uint8(np.asarray(self._images[index]), f"{self.root / 'images.npy'}[{index}]")
        return Tile(image=image, instances=instances, classes=classes, meta=self.metas()[index])

    def read_batch(self, start: int, stop: int) -> TileBatch | None:
        """Tiles start..stop-1 from one slice of each array, checked batch-wide; None for anything this fast
        path does not take (float or wide labels, non-uint8 images, values out of range), which `read_tiles`
        then reads tile by tile, converting it or naming the offending tile."""
        if self._images.dtype != np.uint8:
            return None
        labels = np.asarray(self._labels[start:stop])
        images = np.array(self._images[start:stop], order="C")  # a private copy: the encoder and the writer keep it
        if labels.dtype == np.dtype("<i4") and labels.flags.c_contiguous:
            return _int32_pairs(labels, images)
        if not (labels.dtype.kind in "iu" and np.can_cast(labels.dtype, np.int32)):
            return None
        instances = np.ascontiguousarray(labels[..., 0], dtype=np.int32)
        classes = np.ascontiguousarray(labels[..., 1])
        if instances.size and (instances.min() < 0 or classes.min() < 0 or classes.max() > 255):
            return None
        return TileBatch(images=images, instances=instances, classes=classes.astype(np.uint8, copy=False))

    def labelled(self, index: int) -> LabelledImage:
        instances, classes = self._label_pair(index)
        return LabelledImage(name=self.names[index], instances=instances, classes=classes,
                             tissue=self._cohort(self.names[index]))

    def __getstate__(self) -> dict:
        return {"root": self.root, "split_seed": self.split_seed, "_need_images": self._need_images}


# In a little-endian int32 (instance, class) pair read as one uint64, the instance's sign bit and every
# class bit above the lowest byte: any of them set means a negative instance or a class outside 0..255.
_OUT_OF_RANGE_BITS = 0xFFFFFF00_80000000


def _int32_pairs(labels: np.ndarray, images: np.ndarray) -> TileBatch | None:
    """The common CoNIC labels (little-endian int32) checked in one pass over the pairs and split with one
    strided copy each, instead of a copy, a cast and three reductions (this runs beside a CPU encoder)."""
    if labels.size and int(np.bitwise_or.reduce(labels.view("<u8"), axis=None)) & _OUT_OF_RANGE_BITS:
        return None
    return TileBatch(images=images, instances=labels[..., 0].copy(), classes=labels.view(np.uint8)[..., 4].copy())
