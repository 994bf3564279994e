"""Whole-slide images read at any resolution: OpenSlide first, tifffile's pyramid for what OpenSlide cannot open.

Coordinates are level-0 pixels (the slide's full resolution, QuPath's convention). A region asked
for at a `downsample` of level 0 is read from the coarsest pyramid level still at least as fine as
the request, then resized, so that a 20x model on a 40x slide sees a properly filtered 20x image.
Pixels outside the slide come back white (glass), as scanners fill them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cellgap.featurestore.errors import DatasetError, DatasetNotFoundError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
BACKGROUND = 255  # outside the slide: white glass


class SlideError(DatasetError):
    """A slide cannot be opened or lacks what prediction needs (its pixel size)."""


class _Backend(Protocol):
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SlideInfo:
    """What a slide says about itself; `mpp` is None when the file does not record it."""

    path: Path
    backend: str
    width: int
    height: int
    mpp: float | None
    objective: float | None
    levels: int


class Slide:
    """An open slide; use as a context manager so the file handle is closed."""

    def __init__(self, path: Path, backend: _Backend, name: str, mpp: float | None, objective: float | None) -> None:
        self.path, self._backend, self.backend_name = path, backend, name
        self.mpp, self.objective = mpp, objective

    @property
    def info(self) -> SlideInfo:
        width, height = self.dimensions
        return SlideInfo(self.path, self.backend_name, width, height, self.mpp, self.objective,
                         len(self._backend.level_dimensions))

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        width, height = self._backend.level_dimensions[0]
        return int(width), int(height)

    def read(self, x: int, y: int, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """(height, width, 3) uint8 RGB of the level-0 box starting at (x, y) and spanning
        (width * downsample, height * downsample) level-0 pixels, resized to (width, height)."""
        if width < 1 or height < 1:
            raise ValueError(f"a region must have a positive size, got {width}x{height}")
        if not downsample > 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        level = self._level_for(downsample)
        level_scale = float(self._backend.level_downsamples[level])
        span_w, span_h = width * downsample, height * downsample  # in level-0 pixels
        lx, ly = int(math.floor(x / level_scale)), int(math.floor(y / level_scale))
        lw = max(1, int(math.ceil((x + span_w) / level_scale)) - lx)
        lh = max(1, int(math.ceil((y + span_h) / level_scale)) - ly)
        pixels = self._read_clipped(level, lx, ly, lw, lh)
        if (lw, lh) == (width, height):
            return pixels
        from PIL import Image

        return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))

    def thumbnail(self, max_side: int = 1024, block: int = 512) -> tuple[np.ndarray, float]:
        """An RGB thumbnail no larger than `max_side` and its downsample from level 0, read in blocks so that
        a slide without a pyramid never has its full resolution in memory at once."""
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_side)
        out_w, out_h = max(1, round(width / downsample)), max(1, round(height / downsample))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for top in range(0, out_h, block):
            for left in range(0, out_w, block):
                w, h = min(block, out_w - left), min(block, out_h - top)
                out[top : top + h, left : left + w] = self.read(round(left * downsample), round(top * downsample),
                                                                w, h, downsample)
        return out, downsample

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _level_for(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as `downsample` (1% slack for rounding)."""
        best = 0
        for level, scale in enumerate(self._backend.level_downsamples):
            if scale <= downsample * 1.01:
                best = level if scale >= self._backend.level_downsamples[best] else best
        return best

    def _read_clipped(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Level pixels of a box that may stick out of the level; the outside is white."""
        level_w, level_h = (int(v) for v in self._backend.level_dimensions[level])
        out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(level_w, x + width), min(level_h, y + height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._backend.read(level, x0, y0, x1 - x0, y1 - y0)
        return out


class _OpenSlideBackend:
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.level_dimensions = tuple(handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        scale = self.level_downsamples[level]  # OpenSlide takes the origin in level-0 pixels
        region = self._handle.read_region((round(x * scale), round(y * scale)), level, (width, height))
        rgba = np.asarray(region)
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0  # transparent = not scanned: white, as on glass
        rgb = rgba[..., :3].astype(np.float32) * alpha + BACKGROUND * (1.0 - alpha)
        return np.rint(rgb).astype(np.uint8)

    def close(self) -> None:
        self._handle.close()


class _TiffBackend:
    """Pyramidal TIFF / OME-TIFF through tifffile's zarr view: only the tiles a region touches are decoded."""

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        self._tiff = tifffile.TiffFile(path)
        series = self._tiff.series[0]
        self._axes = series.axes
        if not set("YX") <= set(self._axes):
            self._tiff.close()
            raise SlideError(f"{path}: the first image series has axes {self._axes!r}, not an image (Y, X)")
        self._levels = [zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        dims = [(int(level.shape[self._axes.index("X")]), int(level.shape[self._axes.index("Y")]))
                for level in self._levels]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple(dims[0][0] / w for w, _ in dims)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        index: list[Any] = []
        for axis in self._axes:
            index.append(slice(y, y + height) if axis == "Y" else slice(x, x + width) if axis == "X"
                         else slice(None) if axis == "S" else 0)
        pixels = np.asarray(self._levels[level][tuple(index)])
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=-1)
        if "S" in self._axes and self._axes.index("S") < self._axes.index("Y"):
            pixels = np.moveaxis(pixels, 0, -1)
        pixels = pixels[..., :3]
        if pixels.dtype != np.uint8:
            top = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else 1.0
            pixels = np.clip(np.rint(pixels.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels)

    def close(self) -> None:
        self._tiff.close()


def open_slide(path: Path | str, *, mpp: float | None = None) -> Slide:
    """Open a slide with OpenSlide, or with tifffile when OpenSlide does not know the file.

    `mpp` overrides what the file records (for slides whose scanner left it out).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: slide file not found")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise SlideError(f"--mpp must be a positive number of microns per pixel, got {mpp}")
    opened = None if _is_ome_tiff(path) else _open_with_openslide(path)  # OpenSlide does not see OME's pyramid
    if opened is not None:
        backend, properties = opened
        recorded = _float(properties.get("openslide.mpp-x"))
        if recorded is None and properties.get("openslide.vendor") == "generic-tiff":
            recorded = _tiff_mpp(path)
        objective = _float(properties.get("openslide.objective-power"))
        return Slide(path, backend, "openslide", mpp or recorded, objective)
    try:
        tiff_backend = _TiffBackend(path)
    except SlideError:
        raise
    except Exception as error:  # tifffile raises many kinds on foreign or damaged files
        raise SlideError(f"{path}: not a slide OpenSlide or tifffile can read ({type(error).__name__}: {error})") \
            from None
    return Slide(path, tiff_backend, "tifffile", mpp or _tiff_mpp(path), None)


def _is_ome_tiff(path: Path) -> bool:
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return bool(tiff.is_ome)
    except Exception:  # not a TIFF at all: the readers below say so
        return False


def _open_with_openslide(path: Path) -> tuple[_OpenSlideBackend, dict[str, str]] | None:
    try:
        import openslide
    except ImportError:  # the wheel is a dependency; a broken install still reads TIFFs
        return None
    if openslide.OpenSlide.detect_format(str(path)) is None:
        return None
    try:
        handle = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as error:
        raise SlideError(f"{path}: OpenSlide cannot read it ({error})") from None
    return _OpenSlideBackend(handle), dict(handle.properties)


def _tiff_mpp(path: Path) -> float | None:
    """Microns per pixel from OME metadata or the TIFF resolution tags, when present."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        if tiff.ome_metadata:
            import re

            found = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tiff.ome_metadata)
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tiff.ome_metadata)
            if found and (unit is None or unit.group(1) in ("µm", "um", "\u00b5m")):
                return _float(found.group(1))
        page = tiff.pages.first
        tags = page.tags
        unit_tag, x_tag = tags.get("ResolutionUnit"), tags.get("XResolution")
        if unit_tag is None or x_tag is None:
            return None
        numerator, denominator = x_tag.value
        if not numerator or not denominator:
            return None
        per_unit = numerator / denominator  # pixels per unit
        microns = {2: 25400.0, 3: 10000.0}.get(int(unit_tag.value))  # inch, centimetre
        return None if microns is None else microns / per_unit


def _float(value: object) -> float | None:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
