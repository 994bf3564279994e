"""Predicting images of any size: overlapping windows blended with a smooth weight, post-processed once.

Windows overlap by half a tile; each window's probabilities are weighted by a separable squared-Hann
window (never zero, so image borders covered by one window keep their values) and the weighted sums
are normalised. Post-processing runs once on the blended full-image maps, so a cell cut by a
window border is seen whole and never counted twice.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cellgap.core.tiling import tile_origins
from cellgap.decoder.inference import TileMaps


def window_weight(tile: int, floor: float = 1e-3) -> np.ndarray:
    ramp = np.hanning(tile + 2)[1:-1] ** 2
    weight = np.outer(ramp, ramp)
    return np.maximum(weight, floor).astype(np.float32)


def blend_windows(image: np.ndarray, tile: int, predict_windows: Callable[[np.ndarray], list[TileMaps]],
                  batch_size: int = 8) -> TileMaps:
    """Full-image maps of an (H,W,3) image with H, W >= tile."""
    height, width = image.shape[:2]
    origins = tile_origins(height, width, tile, stride=max(1, tile // 2))
    weight = window_weight(tile)
    total = np.zeros((height, width), np.float32)
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        windows = np.stack([image[r : r + tile, c : c + tile] for r, c in chunk])
        predicted = predict_windows(windows)
        if len(predicted) != len(chunk):
            raise ValueError(f"{len(chunk)} windows gave {len(predicted)} maps")
        for (row, col), maps in zip(chunk, predicted):
            region = (slice(row, row + tile), slice(col, col + tile))
            for name in ("sm1", "ddm", "classes"):
                values = getattr(maps, name)
                if values is None:
                    continue
                if name not in sums:
                    sums[name] = np.zeros((values.shape[0], height, width), np.float32)
                sums[name][(slice(None),) + region] += values * weight
            total[region] += weight
    return TileMaps(sm1=sums["sm1"] / total, ddm=sums["ddm"] / total,
                    classes=sums["classes"] / total if "classes" in sums else None)


def pad_to_tile(image: np.ndarray, tile: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad an image smaller than a tile (the original size is returned to crop back)."""
    height, width = image.shape[:2]
    pad_rows, pad_cols = max(0, tile - height), max(0, tile - width)
    if not pad_rows and not pad_cols:
        return image, (height, width)
    pad_width = ((0, pad_rows), (0, pad_cols), (0, 0))
    if height > 1 and width > 1 and pad_rows < height and pad_cols < width:
        return np.pad(image, pad_width, mode="reflect"), (height, width)
    return np.pad(image, pad_width, mode="edge"), (height, width)
