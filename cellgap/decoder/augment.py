"""D4 augmentation applied jointly to feature maps, the image and the targets, without the encoder.

Rotating and flipping a tile permutes and negates the directional distance maps: the horizontal
map of a quarter-turned cell is its old vertical map, and so on. `ddm_view_mapping` derives that
from each channel's direction, so `targets(view(labels)) == view(targets(labels))` holds exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb_from_hed

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


# Colour deconvolution of H&E (Ruifrok & Johnston, as skimage.color ships it): rows are the optical
# densities of haematoxylin, eosin and DAB.
_RGB_FROM_HED = torch.from_numpy(rgb_from_hed.astype(np.float32))
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_DARKEST = 1.0 / 255.0


def random_stain_factors(n: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3): per tile, a scale in [1-s, 1+s] and a shift in [-s/4, s/4] (optical density) per stain."""
    unit = torch.rand((n, 2, 3), generator=generator) * 2 - 1
    return torch.stack([1 + strength * unit[:, 0], 0.25 * strength * unit[:, 1]], dim=1)


def jitter_stains(image: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Image (B,3,H,W) in [0,1] with each stain's density scaled and shifted (Tellez et al. 2018's HED jitter).

    Labs differ mostly in how much haematoxylin and eosin a slide took up and how the scanner renders
    it; perturbing the densities in the H&E basis mimics that, where RGB jitter would also invent
    colours no stain makes. Factors of scale 1 and shift 0 give back the image.
    """
    to_hed = _HED_FROM_RGB.to(image.device, image.dtype)
    to_rgb = _RGB_FROM_HED.to(image.device, image.dtype)
    factors = factors.to(image.device, image.dtype)
    density = -torch.log(image.clamp_min(_DARKEST)).permute(0, 2, 3, 1)  # (B,H,W,3)
    stains = density @ to_hed
    stains = stains * factors[:, None, None, 0] + factors[:, None, None, 1]
    return torch.exp(-(stains @ to_rgb)).clamp(0.0, 1.0).permute(0, 3, 1, 2)
