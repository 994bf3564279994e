"""Regions of the server's own slides for /v1/predict/region.

A client names a slide by a path relative to the configured slides root, and nothing else: the
name is refused when it could point elsewhere (absolute, `..`, backslashes), then resolved
(symlinks followed) and refused again unless the real file lies inside the root, so a link inside
the root cannot lead out of it. Answers name the slide as the client gave it, never a server path.
The region is checked against the slide and the pixel limit from the slide's header, before a pixel
is read; the cells found in it are mapped back to level-0 slide pixels, QuPath's coordinates.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from cellgap.api.errors import (
    ForbiddenError,
    InvalidInputError,
    NotEnabledError,
    NotFoundError,
    TooLargeError,
    UnsupportedMediaError,
)
from cellgap.api.uploads import Limits, check_size
from cellgap.decoder.outputs import Cell
from cellgap.featurestore.errors import DatasetError, DatasetNotFoundError
from cellgap.featurestore.slides.reader import SLIDE_SUFFIXES, Slide, open_slide
from cellgap.featurestore.slides.resolution import read_scale

SLIDES_OFF = "this server has no slides root (CELLGAP_SLIDES_ROOT or --slides-root): /v1/predict/region is off"
# a region may span this many times the pixel limit at level 0: a slide finer than the model (40x for a 20x model)
# without a pyramid level at the model's pixel size is read at full resolution, then resized
LEVEL0_FACTOR = 4


def slides_root(root: Path | None) -> Path:
    """The configured root, resolved; 501 when the server has none."""
    if root is None:
        raise NotEnabledError(SLIDES_OFF, code="no_slides_root")
    return root.resolve()


def _label(name: str) -> str:
    return repr(name[:200])


def slide_path(root: Path, name: str) -> Path:
    """The real file that `name` (relative to `root`, '/'-separated) names, only when it lies inside `root`.

    Refused before the disk is touched: absolute names, `~`, `..`, backslashes and NUL (422); after
    resolving: anything whose real path leaves the root (403, the same answer whether or not the target
    exists, so the route tells nothing about the rest of the server), a missing file (404), a file that is
    not a slide by its suffix (415). Symlinks inside the root that stay inside it are followed.
    """
    what = f"slide {_label(name)}"
    if not name or "\x00" in name or "\\" in name:
        raise InvalidInputError(f"{what}: not a '/'-separated path (empty, or holds a NUL or backslash)",
                                code="invalid_slide_path")
    relative = PurePosixPath(name)
    if relative.is_absolute() or name.startswith("~") or ".." in relative.parts:
        raise InvalidInputError(f"{what}: give a path relative to the slides root, without '..' (absolute paths "
                                "and parent folders are refused)", code="invalid_slide_path")
    try:
        real = root.joinpath(relative).resolve()
        inside = real.is_relative_to(root)
        exists = inside and real.is_file()
    except (OSError, RuntimeError, ValueError):  # a link loop, a name too long, characters the file system refuses
        raise NotFoundError(f"{what}: no such slide under the slides root", code="slide_not_found") from None
    if not inside:
        raise ForbiddenError(f"{what}: leads outside the slides root (through a symbolic link); refused",
                             code="outside_slides_root")
    if not exists:
        raise NotFoundError(f"{what}: no such slide under the slides root", code="slide_not_found")
    if real.suffix.lower() not in SLIDE_SUFFIXES:
        raise UnsupportedMediaError(f"{what}: not a slide file (expected one of {', '.join(SLIDE_SUFFIXES)})",
                                    code="not_a_slide")
    return real


def open_region_slide(path: Path, name: str, mpp: float | None) -> Slide:
    """The slide open (call it in the thread pool); a file neither OpenSlide nor tifffile reads is a 415 whose
    message names the slide as the client did."""
    what = f"slide {_label(name)}"
    try:
        return open_slide(path, mpp=mpp)
    except DatasetNotFoundError:
        raise NotFoundError(f"{what}: no such slide under the slides root", code="slide_not_found") from None
    except (DatasetError, OSError, ValueError) as error:
        detail = str(error).replace(str(path), "").lstrip(": ")
        if str(path.parent) in detail:  # a message naming another server path: left out
            detail = type(error).__name__
        raise UnsupportedMediaError(f"{what}: not a slide OpenSlide or tifffile can read ({detail[:300]})",
                                    code="not_a_slide") from None


@dataclass(frozen=True)
class RegionPlan:
    """A region of level 0 and how it is read: `scale` level-0 pixels per pixel read, at `mpp * scale` microns."""

    x: int
    y: int
    width: int
    height: int
    mpp: float  # the slide's, at level 0
    scale: float
    read_width: int
    read_height: int

    def read(self, slide: Slide) -> np.ndarray:
        """(read_height, read_width, 3) uint8: the region at the model's pixel size (call it in the thread pool)."""
        return slide.read(self.x, self.y, self.read_width, self.read_height, self.scale)

    def point(self, x: float, y: float) -> tuple[float, float]:
        """A pixel-centre point (centroid) of the image read, in level-0 pixel-centre units."""
        if self.scale == 1.0:  # the common case, exactly the image's coordinates shifted by the origin
            return self.x + x, self.y + y
        return self.x + (x + 0.5) * self.scale - 0.5, self.y + (y + 0.5) * self.scale - 0.5

    def edge(self, x: float, y: float) -> tuple[float, float]:
        """A pixel-edge point (polygon vertex, bbox corner) of the image read, in level-0 pixel-edge units."""
        return self.x + x * self.scale, self.y + y * self.scale


def plan_region(slide: Slide, name: str, region: tuple[int, int, int, int], target_mpp: float,
                limits: Limits) -> RegionPlan:
    """The region's read, checked from the slide's header alone: its pixel size known (422 `no_mpp`), the
    region inside the slide (422 `region_outside_slide`), the image read within the pixel limit (413)."""
    what = f"slide {_label(name)}"
    x, y, width, height = region
    if slide.mpp is None:
        raise InvalidInputError(f"{what}: the slide does not record its pixel size (microns per pixel), which is "
                                f"needed to read it at the model's {target_mpp:g}; give `mpp` in the request",
                                code="no_mpp")
    slide_width, slide_height = slide.dimensions
    if x + width > slide_width or y + height > slide_height:
        raise InvalidInputError(f"{what}: the region x={x}, y={y}, {width} x {height} leaves the slide "
                                f"({slide_width} x {slide_height} pixels at level 0)", code="region_outside_slide")
    scale = read_scale(slide.mpp, target_mpp)
    read_width, read_height = max(1, round(width / scale)), max(1, round(height / scale))
    check_size(read_height, read_width, limits, f"{what}, region read at {slide.mpp * scale:.3g} mpp")
    if width * height > LEVEL0_FACTOR * limits.max_pixels:
        raise TooLargeError(f"{what}: the region spans {width} x {height} level-0 pixels, more than "
                            f"{LEVEL0_FACTOR} x the limit of {limits.max_pixels} pixels", code="image_too_large")
    return RegionPlan(x, y, width, height, slide.mpp, scale, read_width, read_height)


def level0_cells(cells: list[Cell], plan: RegionPlan) -> list[Cell]:
    """The cells of the image read, in level-0 slide pixels: centroids in pixel-centre units, shapes in
    pixel-edge units, bounding boxes widened to whole pixels and areas in level-0 pixels (both exact when
    the slide is read at its own pixel size, `scale` 1)."""
    out = []
    for cell in cells:
        x0, y0 = plan.edge(cell.bbox[0], cell.bbox[1])
        x1, y1 = plan.edge(cell.bbox[2], cell.bbox[3])
        shapes = [[[list(plan.edge(x, y)) for x, y in ring] for ring in piece] for piece in cell.shapes]
        out.append(dataclasses.replace(
            cell, centroid=plan.point(*cell.centroid), shapes=shapes, area=round(cell.area * plan.scale**2),
            bbox=(math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))))
    return out
