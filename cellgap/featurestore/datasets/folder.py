"""Folders of image files with optional label files, cut into tiles: the `folder` and `cytodark0` formats.

Layout: `<images>/<name>.(png|tif|tiff|jpg)` and `<labels>/<name>.(npy|tif|tiff|mat|png)`. Images of
any size at least one tile large are cut into tiles that cover every pixel.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cellgap.core.tiling import crop, tile_origins
from cellgap.featurestore.datasets.base import DatasetInfo, LabelledImage, MetasOnce, Tile, TileMeta
from cellgap.featurestore.datasets.imageio import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    image_header_size,
    read_image,
    read_label,
)
from cellgap.featurestore.datasets.splitfile import read_split_file
from cellgap.featurestore.datasets.splits import stratified_group_split
from cellgap.featurestore.errors import DatasetError, DatasetNotFoundError


def files_by_stem(directory: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """Files of the given kinds in a folder, keyed by name without extension (duplicates are an error)."""
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise DatasetError(f"{directory}: two {what} files named {path.stem!r} ({found[path.stem].name}, {path.name})")
            found[path.stem] = path
    return found


def read_class_names(root: Path) -> tuple[str, ...] | None:
    """Class names from `classes.json` ({"1": "name", ...} or a list) or `classes.txt` (one per line)."""
    json_path, text_path = root / "classes.json", root / "classes.txt"
    try:
        if json_path.is_file():
            content = json.loads(json_path.read_text())
            if isinstance(content, list):
                return tuple(str(c) for c in content)
            if isinstance(content, dict):
                by_id = {int(k): v for k, v in content.items()}  # keys like "01" or " 1" name id 1 too
                ids = sorted(by_id)
                if len(by_id) != len(content) or ids != list(range(1, len(ids) + 1)):
                    raise DatasetError(f"{json_path}: class ids must be 1..K without repeats, got {sorted(content)}")
                return tuple(str(by_id[i]) for i in ids)
            raise DatasetError(f"{json_path}: expected a list of names or an object id -> name")
        if text_path.is_file():
            return tuple(line.strip() for line in text_path.read_text().splitlines() if line.strip())
    except (OSError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{json_path if json_path.is_file() else text_path}: cannot read class names ({error})") from None
    return None


@dataclass(frozen=True)
class FolderLayout:
    """Where a folder-like format keeps its files and what it knows about its classes."""

    format: str
    image_dir: str
    label_dir: str
    class_names: tuple[str, ...] | None  # None: read classes.json/txt or infer from the labels
    magnification: int | None


class ImageFolderDataset(MetasOnce):
    """Tiles cut from a folder of images; labels optional (all images or none)."""

    def __init__(self, root: Path, layout: FolderLayout, tile_size: int = 256, split_seed: int = 0) -> None:
        self.root, self.layout, self.tile_size, self.split_seed = root, layout, tile_size, split_seed
        self._lock = threading.Lock()
        self._cache: tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None] | None = None
        image_dir = root / layout.image_dir
        if not root.is_dir():
            raise DatasetNotFoundError(f"{root}: folder not found")
        if not image_dir.is_dir():
            raise DatasetNotFoundError(f"{image_dir}: images folder not found (expected {layout.image_dir}/ inside {root})")
        self.images = files_by_stem(image_dir, IMAGE_SUFFIXES, "image")
        if not self.images:
            raise DatasetError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        label_dir = root / layout.label_dir
        self.labels = files_by_stem(label_dir, LABEL_SUFFIXES, "label") if label_dir.is_dir() else {}
        labelled = [s for s in self.images if s in self.labels]
        if labelled and len(labelled) != len(self.images):
            missing = next(s for s in self.images if s not in self.labels)
            raise DatasetError(
                f"{label_dir}: {len(labelled)} of {len(self.images)} images have labels (none for {missing!r}); "
                "label all images or none"
            )
        self.stems = sorted(self.images)

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache", "_metas", "_tiles")}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = None

    @property
    def has_labels(self) -> bool:
        return bool(self.labels)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        if self.layout.class_names is not None:
            return self.layout.class_names
        named = read_class_names(self.root)
        if named is not None:
            return named
        highest = 0
        for stem in self.stems if self.has_labels else ():
            _, classes = read_label(self.labels[stem])
            if classes is not None and classes.size:
                highest = max(highest, int(classes.max()))
        return tuple(f"class_{k}" for k in range(1, highest + 1))

    @cached_property
    def _tiles(self) -> list[tuple[int, tuple[int, int]]]:
        tiles: list[tuple[int, tuple[int, int]]] = []
        for image_index, stem in enumerate(self.stems):
            height, width = image_header_size(self.images[stem])
            try:
                origins = tile_origins(height, width, self.tile_size)
            except ValueError as error:
                raise DatasetError(f"{self.images[stem]}: {error}; choose a smaller --tile-size") from None
            tiles.extend((image_index, origin) for origin in origins)
        return tiles

    @cached_property
    def _split_file(self) -> list[str] | None:
        return read_split_file(self.root, self.stems)  # parsed once, for the splits and for `info`

    @cached_property
    def _splits(self) -> dict[str, str]:
        fixed = self._split_file
        splits = fixed if fixed is not None else stratified_group_split(self.stems, [""] * len(self.stems), self.split_seed)
        return dict(zip(self.stems, splits))

    @property
    def info(self) -> DatasetInfo:
        own_split = self._split_file is not None
        return DatasetInfo(
            format=self.layout.format,
            path=str(self.root.resolve()),
            class_names=self.class_names,
            magnification=self.layout.magnification,
            has_labels=self.has_labels,
            tile_size=self.tile_size,
            split_policy="dataset" if own_split else f"seeded-stratified(seed={self.split_seed},group=image)",
        )

    def __len__(self) -> int:
        return len(self._tiles)

    def list_metas(self) -> list[TileMeta]:
        tiles_per_image = Counter(image_index for image_index, _ in self._tiles)
        metas = []
        for image_index, origin in self._tiles:
            stem = self.stems[image_index]
            name = stem if tiles_per_image[image_index] == 1 else f"{stem}@{origin[0]}_{origin[1]}"
            metas.append(TileMeta(name=name, source=self.images[stem].name, split=self._splits[stem], origin=origin))
        return metas


    def read_whole(self, image_index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Image, instances and classes of one source image (consecutive tiles reuse the last read)."""
        with self._lock:
            if self._cache is not None and self._cache[0] == image_index:
                return self._cache[1], self._cache[2], self._cache[3]
        stem = self.stems[image_index]
        image = read_image(self.images[stem])
        instances = classes = None
        if self.has_labels:
            instances, classes = read_label(self.labels[stem])
            if instances.shape != image.shape[:2]:
                raise DatasetError(
                    f"{self.labels[stem]}: label map is {instances.shape[0]}x{instances.shape[1]} but image "
                    f"{self.images[stem].name} is {image.shape[0]}x{image.shape[1]}"
                )
            if classes is None and self.class_names:
                classes = (instances > 0).astype(np.uint8)  # untyped labels in a typed data set: class 1
        with self._lock:
            self._cache = (image_index, image, instances, classes)
        return image, instances, classes

    def __getitem__(self, index: int) -> Tile:
        image_index, origin = self._tiles[index]
        image, instances, classes = self.read_whole(image_index)
        tile_image = crop(image, origin, self.tile_size)
        assert tile_image is not None  # crop keeps None only for None
        return Tile(
            image=tile_image,
            instances=crop(instances, origin, self.tile_size),
            classes=crop(classes, origin, self.tile_size),
            meta=self.metas()[index],
        )


class LabelFolder:
    """Only the label files of a folder (`labels/<name>.*`), whole images, for evaluation."""

    def __init__(self, root: Path, label_dir: str = "labels", class_names: tuple[str, ...] | None = None) -> None:
        directory = root / label_dir
        if not directory.is_dir():
            raise DatasetNotFoundError(f"{directory}: labels folder not found")
        self.root = root
        self.labels = files_by_stem(directory, LABEL_SUFFIXES, "label")
        if not self.labels:
            raise DatasetError(f"{directory}: no label files ({', '.join(LABEL_SUFFIXES)})")
        self._names = sorted(self.labels)
        self._class_names = class_names

    @property
    def names(self) -> list[str]:
        return self._names

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        if self._class_names is not None:
            return self._class_names
        named = read_class_names(self.root)
        return named if named is not None else ()

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> LabelledImage:
        name = self._names[index]
        instances, classes = read_label(self.labels[name])
        return LabelledImage(name=name, instances=instances, classes=classes)
