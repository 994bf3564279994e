"""Whole-slide images as a tile data set: the tissue tiles of each slide, read at one pixel size.

`slides:PATH[,mpp=M][,tissue=F]` takes a slide file or a folder of slides. Tiles lie on a grid of
tile-size steps in the wanted resolution; a tile is kept when at least `tissue` (default 0.25) of
its area is tissue on the thumbnail mask (`cellgap predict --slides` uses the same detector). The
wanted magnification is `--magnification`, else the first slide's own (from its pixel size);
every slide is read at that objective's pixel size (0.25 um at 40x, 0.5 um at 20x), resampled where
its own differs. `mpp=` overrides what slides record. Tile names carry the slide and the level-0
position, and `meta/origin` holds that position (row, column) in level-0 pixels. Slides have no
labels: a store made from them serves `predict --store` and feature studies, not training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellgap.featurestore.datasets.base import UNSPLIT, DatasetInfo, MetasOnce, Tile, TileMeta
from cellgap.featurestore.errors import DatasetError, DatasetNotFoundError
from cellgap.featurestore.slides.reader import SLIDE_SUFFIXES, Slide, open_slide
from cellgap.featurestore.slides.resolution import MPP_AT_MAGNIFICATION, magnification_of_mpp, read_scale
from cellgap.featurestore.slides.tissue import detect_tissue

DEFAULT_TISSUE = 0.25


@dataclass(frozen=True)
class SlidesOptions:
    path: Path
    mpp: float | None = None  # level-0 pixel size over what the slides record
    tissue: float = DEFAULT_TISSUE  # least tissue share of a kept tile


def parse_slides_spec(text: str, spec: str) -> SlidesOptions:
    """`PATH[,mpp=M][,tissue=F]`; the path itself may not contain commas."""
    head, *rest = [part.strip() for part in text.split(",")]
    values: dict[str, float] = {}
    for part in rest:
        key, _, value = part.partition("=")
        if key not in ("mpp", "tissue"):
            raise DatasetError(f"{spec!r}: unknown option {key!r} (slides:PATH[,mpp=M][,tissue=F])")
        try:
            values[key] = float(value)
        except ValueError:
            raise DatasetError(f"{spec!r}: {key} must be a number, got {value!r}") from None
    mpp, tissue = values.get("mpp"), values.get("tissue", DEFAULT_TISSUE)
    if mpp is not None and not (math.isfinite(mpp) and 0 < mpp < 10):
        raise DatasetError(f"{spec!r}: mpp must be between 0 and 10 microns per pixel, got {mpp}")
    if not 0 <= tissue <= 1:
        raise DatasetError(f"{spec!r}: tissue must be a share between 0 and 1, got {tissue}")
    return SlidesOptions(Path(head).expanduser(), mpp, tissue)


def slide_files(path: Path) -> list[Path]:
    """The slide itself, or the slides directly inside a folder, by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetNotFoundError(f"{path}: no slide or folder of slides here")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
    if not found:
        raise DatasetError(f"{path}: holds no slides ({', '.join(SLIDE_SUFFIXES)})")
    return found


@dataclass(frozen=True)
class _SlideEntry:
    path: Path
    stem: str
    mpp: float  # level-0 pixel size
    scale: float  # level-0 pixels per pixel read


class SlideTiles(MetasOnce):
    """The tissue tiles of one or more slides; picklable (slides are opened lazily in each process)."""

    def __init__(self, options: SlidesOptions, tile_size: int = 256, magnification: int | None = None) -> None:
        self.options, self.tile_size = options, tile_size
        files = slide_files(options.path)
        stems = [p.name.split(".")[0] for p in files]
        if len(set(stems)) != len(stems):
            raise DatasetError(f"{options.path}: two slides share a name: "
                               + ", ".join(sorted({s for s in stems if stems.count(s) > 1})))
        recorded = [self._slide_mpp(path) for path in files]
        if magnification is None:
            magnification = magnification_of_mpp(recorded[0])
            if magnification is None:
                raise DatasetError(f"{files[0]}: its pixel size {recorded[0]:.3f} um is neither 20x nor 40x; "
                                   "give --magnification 20|40 to read the slides at one of them")
        self.magnification = magnification
        self.mpp = MPP_AT_MAGNIFICATION[magnification]
        self._slides = [_SlideEntry(path, stem, mpp, read_scale(mpp, self.mpp))
                        for path, stem, mpp in zip(files, stems, recorded)]
        self._numbers = {entry.path.name: number for number, entry in enumerate(self._slides)}
        self._open: dict[int, Slide] = {}

    def _slide_mpp(self, path: Path) -> float:
        with open_slide(path, mpp=self.options.mpp) as slide:
            if slide.mpp is None:
                raise DatasetError(f"{path}: the slide does not record its pixel size; add mpp=M to the data set "
                                   f"(slides:{self.options.path},mpp=0.25 for 40x)")
            return float(slide.mpp)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # file handles stay in the process that opened them
        return state

    def _slide(self, number: int) -> Slide:
        if number not in self._open:
            self._open[number] = open_slide(self._slides[number].path, mpp=self.options.mpp)
        return self._open[number]

    @property
    def info(self) -> DatasetInfo:
        slides = {entry.stem: f"{entry.path.name} {entry.mpp:.4f}um" for entry in self._slides}
        return DatasetInfo(format="slides", path=str(self.options.path), class_names=(),
                           magnification=self.magnification, mpp=self.mpp, has_labels=False, tile_size=self.tile_size,
                           split_policy="none (unlabelled slides)",
                           extra={"tissue_share": str(self.options.tissue), "slides": "; ".join(
                               f"{stem}: {text}" for stem, text in slides.items())})

    def list_metas(self) -> list[TileMeta]:
        metas = []
        for number, entry in enumerate(self._slides):
            slide = self._slide(number)
            thumbnail, downsample = slide.thumbnail()
            tissue = detect_tissue(thumbnail, downsample)
            width, height = slide.dimensions
            step = self.tile_size * entry.scale  # level-0 pixels per tile
            for row in range(int(height // step)):
                for col in range(int(width // step)):
                    x, y = round(col * step), round(row * step)
                    if _tissue_share(tissue.mask, downsample, x, y, step) >= max(self.options.tissue, 1e-9):
                        metas.append(TileMeta(name=f"{entry.stem}_x{x}_y{y}", source=entry.path.name, split=UNSPLIT,
                                              origin=(y, x)))
        return metas

    def __len__(self) -> int:
        return len(self.metas())

    def __getitem__(self, index: int) -> Tile:
        meta = self.metas()[index]
        number = self._numbers[meta.source]
        y, x = meta.origin
        image = self._slide(number).read(x, y, self.tile_size, self.tile_size, self._slides[number].scale)
        return Tile(image=np.ascontiguousarray(image), instances=None, classes=None, meta=meta)


def _tissue_share(mask: np.ndarray, downsample: float, x: float, y: float, size: float) -> float:
    """The share of a level-0 square that is tissue on the thumbnail mask."""
    r0, c0 = int(y // downsample), int(x // downsample)
    r1, c1 = max(r0 + 1, int(math.ceil((y + size) / downsample))), max(c0 + 1, int(math.ceil((x + size) / downsample)))
    window = mask[r0:r1, c0:c1]
    return float(window.mean()) if window.size else 0.0
