"""D4 augmentation applied jointly to feature maps, the image and the targets, without the encoder.

Rotating and flipping a tile permutes and negates the directional distance maps: the horizontal
map of a quarter-turned cell is its old vertical map, and so on. `ddm_view_mapping` derives that
from each channel's direction, so `targets(view(labels)) == view(targets(labels))` holds exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from cellgap.core.views import ALL_VIEWS, apply_view, parse_view

# Each distance-map channel ramps along a direction in (row, column): h, v, tl, bl.
_DIRECTIONS = np.array([[0, 1], [1, 0], [1, 1], [-1, 1]])


def _coordinate_map(view: str) -> np.ndarray:
    """Linear part of the pixel-coordinate map of a view: new (row, col) = A @ old (row, col) + offset."""
    flip, turns = parse_view(view)
    matrix = np.array([[1, 0], [0, -1]]) if flip else np.eye(2, dtype=int)
    quarter = np.array([[0, -1], [1, 0]])  # np.rot90: (r, c) -> (n-1-c, r)
    for _ in range(turns):
        matrix = quarter @ matrix
    return matrix


def ddm_view_mapping(view: str) -> tuple[list[int], list[float]]:
    """For each new channel: the old channel it comes from and its sign (new = sign * view(old))."""
    matrix = _coordinate_map(view)
    sources, signs = [], []
    for direction in _DIRECTIONS:
        pulled = matrix.T @ direction  # the new channel's direction expressed in old coordinates
        for index, candidate in enumerate(_DIRECTIONS):
            if np.array_equal(pulled, candidate) or np.array_equal(pulled, -candidate):
                sources.append(index)
                signs.append(1.0 if np.array_equal(pulled, candidate) else -1.0)
                break
    return sources, signs


def view_ddm(ddm: torch.Tensor, view: str) -> torch.Tensor:
    """Distance maps (..., 4, H, W) of the viewed tile."""
    sources, signs = ddm_view_mapping(view)
    spatial = apply_view(ddm, view)
    sign = torch.tensor(signs, dtype=ddm.dtype, device=ddm.device).view(4, 1, 1)
    return spatial[..., sources, :, :] * sign


def random_views(n: int, generator: torch.Generator, views: tuple[str, ...] = ALL_VIEWS) -> list[str]:
    picks = torch.randint(len(views), (n,), generator=generator).tolist()
    return [views[i] for i in picks]
