"""Synthetic whole-slide images written tile by tile, so benchmarks and memory tests can use slides of
any size (30k x 30k and more) without holding one in memory."""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TILE = 256
GLASS = (238, 236, 240)  # the bright, nearly grey background of a scanned slide


class TissueEllipse:
    """The tissue's outline: one centred ellipse covering `fraction` of the slide (at most pi/4)."""

    def __init__(self, width: int, height: int, fraction: float) -> None:
        if not 0 < fraction <= math.pi / 4:
            raise ValueError(f"tissue fraction must be in (0, {math.pi / 4:.3f}], got {fraction}")
        scale = math.sqrt(4 * fraction / math.pi)
        self.cx, self.cy = width / 2, height / 2
        self.a, self.b = width / 2 * scale, height / 2 * scale

    def mask(self, x0: float, y0: float, size: int, step: float) -> np.ndarray:
        """Which pixels of a `size` square tile are tissue; the tile starts at level-0 (x0, y0), `step`
        level-0 pixels per tile pixel."""
        xs = (x0 + (np.arange(size) + 0.5) * step - self.cx) / self.a
        ys = (y0 + (np.arange(size) + 0.5) * step - self.cy) / self.b
        return (ys[:, None] ** 2 + xs[None, :] ** 2) <= 1.0


def write_synthetic_slide(path: Path, width: int, height: int, mpp: float, tissue_fraction: float = 0.1,
                          seed: int = 0) -> Path:
    """A tiled pyramidal TIFF (OpenSlide's generic-tiff) of synthetic H&E nuclei inside an ellipse of
    tissue on glass; levels halve down to a side of at most 2048."""
    import tifffile

    from cellgap.featurestore.datasets.synthetic import make_image

    tissue = TissueEllipse(width, height, tissue_fraction)
    glass = np.empty((TILE, TILE, 3), np.uint8)
    glass[:] = GLASS

    def tiles(level: int) -> Iterator[np.ndarray]:
        step = 2 ** level
        rows, cols = math.ceil(math.ceil(height / step) / TILE), math.ceil(math.ceil(width / step) / TILE)
        for r in range(rows):
            for c in range(cols):
                inside = tissue.mask(c * TILE * step, r * TILE * step, TILE, step)
                if not inside.any():
                    yield glass
                    continue
                field = make_image(seed * 1_000_003 + level * 100_003 + r * cols + c, TILE, TILE).image
                yield np.where(inside[..., None], field, glass)

    levels = 1
    while max(width, height) / 2 ** (levels - 1) > 2048:
        levels += 1
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for level in range(levels):
            shape = (math.ceil(height / 2 ** level), math.ceil(width / 2 ** level), 3)
            pixels_per_cm = 1e4 / mpp / 2 ** level
            tiff.write(tiles(level), shape=shape, dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                       compression="zlib", subfiletype=0 if level == 0 else 1,
                       resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER")
    return path
