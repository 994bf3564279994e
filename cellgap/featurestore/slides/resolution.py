"""Magnification and pixel size: the usual scanner pixel size of each objective, and the objective of a pixel size."""
from __future__ import annotations

MPP_AT_MAGNIFICATION: dict[int, float] = {40: 0.25, 20: 0.5}  # the usual scanner pixel sizes
TOLERANCE = 0.25  # scanners' "40x" ranges over about 0.22-0.27 microns per pixel


def magnification_of_mpp(mpp: float) -> int | None:
    """20 or 40 when `mpp` is within 25% of that objective's usual pixel size, else None."""
    for magnification, usual in MPP_AT_MAGNIFICATION.items():
        if abs(mpp - usual) <= TOLERANCE * usual:
            return magnification
    return None
SAME_SCALE = 0.05  # slides within 5% of the wanted pixel size are read as they are, not resampled


def read_scale(slide_mpp: float, target_mpp: float) -> float:
    """Level-0 pixels per pixel read: 1.0 for a slide already (within 5%) at the wanted pixel size."""
    scale = target_mpp / slide_mpp
    return 1.0 if abs(scale - 1.0) <= SAME_SCALE else scale
