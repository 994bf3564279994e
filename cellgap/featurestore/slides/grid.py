"""The regions a slide is visited in: non-overlapping cores at the model's resolution, each read with a margin.

A nucleus belongs to the region whose core holds its centroid, so every nucleus is kept exactly
once; the margin (wider than a nucleus) lets the region that keeps it see it whole. Regions whose
core touches no tissue are skipped. Model-resolution pixel (u, v) is level-0 pixel (u, v) * scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cellgap.featurestore.slides.tissue import TissueMask


@dataclass(frozen=True)
class Region:
    """index: position in the slide's full grid (row-major), stable whatever is skipped. Boxes are in
    model-resolution pixels: the core (x, y, width, height), clipped to the slide or ROI, and the
    window read around it."""

    index: int
    x: int
    y: int
    width: int
    height: int
    margin: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the pixels read: the core and its margin on every side."""
        return self.x - self.margin, self.y - self.margin, self.width + 2 * self.margin, self.height + 2 * self.margin

    def holds(self, x: float, y: float) -> bool:
        """Whether a model-resolution point (e.g. a centroid) lies in this region's core."""
        return self.x <= x < self.x + self.width and self.y <= y < self.y + self.height


@dataclass(frozen=True)
class Roi:
    """A level-0 box (x, y, width, height), from `--roi x,y,w,h`."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Roi:
        parts = text.split(",")
        try:
            values = [int(part) for part in parts]
        except ValueError:
            values = []
        if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] < 1 or values[3] < 1:
            raise ValueError(f"--roi must be x,y,width,height in level-0 pixels (x, y >= 0; width, height >= 1), "
                             f"got {text!r}")
        return cls(*values)


def plan_regions(width: int, height: int, scale: float, size: int, margin: int, *,
                 tissue: TissueMask | None = None, roi: Roi | None = None) -> list[Region]:
    """Regions over a level-0 `width` x `height` slide read at `scale` level-0 pixels per model pixel."""
    if size < 1 or margin < 0 or not scale > 0:
        raise ValueError(f"region size must be >= 1, margin >= 0 and scale > 0 (got {size}, {margin}, {scale})")
    x0, y0, x1, y1 = 0.0, 0.0, width / scale, height / scale
    if roi is not None:
        if roi.x >= width or roi.y >= height:
            raise ValueError(f"--roi {roi.x},{roi.y},{roi.width},{roi.height} starts outside the "
                             f"{width}x{height} slide")
        x0, y0 = roi.x / scale, roi.y / scale
        x1, y1 = min(x1, (roi.x + roi.width) / scale), min(y1, (roi.y + roi.height) / scale)
    columns = max(1, math.ceil((x1 - x0) / size))
    rows = max(1, math.ceil((y1 - y0) / size))
    regions = []
    for row in range(rows):
        for col in range(columns):
            x, y = int(math.floor(x0)) + col * size, int(math.floor(y0)) + row * size
            w, h = min(size, math.ceil(x1) - x), min(size, math.ceil(y1) - y)
            if tissue is not None and not tissue.covers(x * scale, y * scale, w * scale, h * scale):
                continue
            regions.append(Region(row * columns + col, x, y, w, h, margin))
    return regions
