"""Cutting large images into fixed-size tiles that cover every pixel."""
from __future__ import annotations

import numpy as np


def tile_origins(height: int, width: int, tile: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners (row, column) of tiles covering an image; the last row/column is flush with the edge."""
    stride = tile if stride is None else stride
    if height < tile or width < tile:
        raise ValueError(f"image of {height}x{width} is smaller than the tile size {tile}")
    return [(r, c) for r in _starts(height, tile, stride) for c in _starts(width, tile, stride)]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def crop(array: np.ndarray | None, origin: tuple[int, int], tile: int) -> np.ndarray | None:
    """The tile of `array` at `origin` (None stays None)."""
    if array is None:
        return None
    row, col = origin
    return np.ascontiguousarray(array[row : row + tile, col : col + tile])
