"""Where the tissue is, from a thumbnail: Otsu on saturation, cleaned by morphology (as TRIDENT and tiatoolbox do).

Glass is bright and grey, stained tissue is coloured, so saturation separates them whatever the
stain's hue. Otsu's cut is held between two bounds: on a slide that is nearly all tissue it would
otherwise split the tissue itself in two, and on a slide that is nearly all glass it would follow
the scanner's noise. Pen marks and dust survive this; they cost prediction time, not correctness.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_CUT, MAX_CUT = 0.04, 0.08  # saturation: glass lies below ~0.04; pale eosin and mucin reach down to ~0.1
DARK = 30  # below this brightness a pixel is a scanner's black border or a fold, not tissue to find nuclei in


@dataclass(frozen=True)
class TissueMask:
    """mask (h, w) bool over a thumbnail whose pixels each span `downsample` level-0 pixels."""

    mask: np.ndarray
    downsample: float
    cut: float

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def covers(self, x: float, y: float, width: float, height: float) -> bool:
        """Whether a level-0 box touches tissue."""
        rows, cols = self.mask.shape
        r0, c0 = int(y // self.downsample), int(x // self.downsample)
        r1 = min(rows, int(np.ceil((y + height) / self.downsample)))
        c1 = min(cols, int(np.ceil((x + width) / self.downsample)))
        if r1 <= max(r0, 0) or c1 <= max(c0, 0):
            return False
        return bool(self.mask[max(r0, 0) : r1, max(c0, 0) : c1].any())


def detect_tissue(thumbnail: np.ndarray, downsample: float, min_area_px: float = 64.0) -> TissueMask:
    """The tissue of an RGB thumbnail; pieces and holes smaller than `min_area_px` thumbnail pixels are dropped."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, disk, opening, remove_small_holes, remove_small_objects

    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.size == 0:
        raise ValueError(f"expected an RGB thumbnail (h, w, 3), got shape {thumbnail.shape}")
    saturation = rgb2hsv(thumbnail)[..., 1]
    bright = thumbnail.max(axis=2) >= DARK
    values = saturation[bright]
    cut = float(threshold_otsu(values)) if values.size and np.ptp(values) > 0 else MAX_CUT
    cut = min(max(cut, MIN_CUT), MAX_CUT)
    mask = (saturation > cut) & bright
    mask = opening(closing(mask, disk(2)), disk(1))
    mask = remove_small_holes(remove_small_objects(mask, max_size=int(min_area_px)), max_size=int(min_area_px))
    return TissueMask(mask, downsample, cut)


def mask_preview(thumbnail: np.ndarray, tissue: TissueMask) -> np.ndarray:
    """The thumbnail with everything that is not tissue dimmed and the tissue's edge drawn in green."""
    from scipy import ndimage as ndi

    out = thumbnail.astype(np.float32)
    out[~tissue.mask] = out[~tissue.mask] * 0.35 + 255 * 0.65 * 0.5
    edge = tissue.mask & ~ndi.binary_erosion(tissue.mask, iterations=1)
    out[edge] = (0, 158, 115)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
