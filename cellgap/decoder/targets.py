"""Training targets of the CISCA-style decoder, computed once per tile from its instance and class maps.

SM1 marks the band inside a cell that lies within reach of another cell (boundary), the rest of
every cell (body) and everything else (background). Four directional distance maps (DDM) ramp from
-1 to +1 across each instance's bounding box; SM2 is the cell type with 0 = background; a weight
mask focuses the distance-map loss near cells. See cisca.md section 1 for the reference method.
Pure numpy/scipy: a few ms per 256x256 tile, so callers can cache targets next to the tiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage as ndi
from skimage.morphology import remove_small_holes, remove_small_objects

from cellgap.decoder.kernels import FootprintShape, flat_filter, footprint, magnification_defaults

BOUNDARY, BODY, BACKGROUND = 0, 1, 2
"""SM1 values and channel order."""

_EIGHT = np.ones((3, 3), dtype=bool)

# cisca.md table 1a; "near" is the larger dilation SE, "near_erosion" the half-side of its erosion SE.
_MORPHOLOGY: dict[int, dict[str, Any]] = {
    40: {"boundary_shape": "disk", "boundary_radius": 2, "near_shape": "disk", "near_radius": 5,
         "near_erosion": 2, "max_hole": 8},
    20: {"boundary_shape": "square", "boundary_radius": 1, "near_shape": "square", "near_radius": 2,
         "near_erosion": 1, "max_hole": 3},
}


class TargetConfig(BaseModel):
    """How targets are drawn; morphology sizes follow the magnification unless given explicitly.

    `TargetConfig(magnification=20)` takes every 20x size from cisca.md table 1a; any size passed
    alongside overrides just that size.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    magnification: Literal[20, 40] = 40
    boundary_shape: FootprintShape = "disk"
    boundary_radius: int = Field(2, ge=1, description="reach of another cell that makes a boundary")
    near_shape: FootprintShape = "disk"
    near_radius: int = Field(5, ge=0, description="larger reach for thin strips facing a near cell; 0 = off")
    near_erosion: int = Field(2, ge=0, description="half-side of the square that decides a strip is thin")
    max_hole: int = Field(8, ge=0, description="cell pixels enclosed by boundary in pieces below this size join it")
    min_speck: int = Field(2, ge=0, description="boundary pieces below this size (8-connected) become body")
    regression_dilation: int = Field(6, ge=0, description="disk radius around cells where the DDM loss weighs 1")
    regression_background_weight: float = Field(0.05, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _sizes_from_magnification(cls, data: Any) -> Any:
        return magnification_defaults(data, _MORPHOLOGY)

    @classmethod
    def for_magnification(cls, magnification: int) -> TargetConfig:
        """The reference sizes for 20x or 40x tiles."""
        return cls(magnification=magnification)


@dataclass(frozen=True)
class Targets:
    """Targets of one tile.

    sm1 (H,W) uint8: 0 boundary, 1 body, 2 background. ddm (4,H,W) float32 in [-1,1], channels
    (h, v, tl, bl), 0 on background. classes (H,W) uint8: cell type, 0 = background. weight (H,W)
    float32: 1 near cells, `regression_background_weight` elsewhere.
    """

    sm1: np.ndarray
    ddm: np.ndarray
    classes: np.ndarray
    weight: np.ndarray


def compute_targets(instances: np.ndarray, classes: np.ndarray | None, config: TargetConfig) -> Targets:
    """All targets of one tile from its (H,W) instance map (0 = background, any ids) and class map.

    Without a class map every cell gets class 1 (the binarised instance map, as the reference does).
    Class values outside cells are set to 0 so that SM2 and SM1 agree on the background.
    """
    labels = _check_instances(instances)
    cells = labels > 0
    if classes is None:
        cell_types = cells.astype(np.uint8)
    else:
        classes = np.asarray(classes)
        if classes.shape != labels.shape:
            raise ValueError(f"class map shape {classes.shape} differs from instance map shape {labels.shape}")
        if classes.size and (classes.min() < 0 or classes.max() > 255):
            raise ValueError("class ids must lie in 0..255")
        cell_types = np.where(cells, classes, 0).astype(np.uint8)
    return Targets(
        sm1=sm1_map(labels, config),
        ddm=distance_maps(labels),
        classes=cell_types,
        weight=regression_weight(labels, config),
    )


def sm1_map(instances: np.ndarray, config: TargetConfig) -> np.ndarray:
    """(H,W) uint8 SM1: 0 where a cell lies within reach of another cell, 1 elsewhere in cells, 2 outside.

    The reach is `boundary_radius` (about 2 px per side at 40x, 1 px at 20x), so the band sits on
    both sides of a contact and a cell's outline against background stays body. As in the reference
    (cisca.md 1a step 4), a cell's strip that faces a near but not touching cell within
    `near_radius` also becomes boundary when the strip is too thin to survive an erosion; the narrow
    background between the cells stays background.
    """
    labels = _sequential(_check_instances(instances))
    cells = labels > 0
    boundary = _within_reach(labels, footprint(config.boundary_shape, config.boundary_radius))
    if config.near_radius > 0:
        boundary |= _thin_strips(labels, config)
    if config.max_hole > 1 and boundary.any():  # small gaps (4-connected) in the boundary, inside cells
        boundary |= remove_small_holes(boundary, max_size=config.max_hole - 1, connectivity=1) & cells
    if config.min_speck > 1 and boundary.any():  # boundary specks (8-connected) too small to learn from
        boundary = remove_small_objects(boundary, max_size=config.min_speck - 1, connectivity=2)
    sm1 = np.where(cells, np.uint8(BODY), np.uint8(BACKGROUND))
    sm1[boundary] = BOUNDARY
    return sm1


def distance_maps(instances: np.ndarray) -> np.ndarray:
    """(4,H,W) float32 directional distance maps in [-1,1], channels (h, v, tl, bl), 0 on background.

    Full-range variant, per instance inside its bounding box: h = -1 at the left bbox edge to +1 at
    the right, v the same from top to bottom, tl along row + column (top-left -1, bottom-right +1)
    and bl along column - row (bottom-left -1, top-right +1), the diagonals min-max scaled over the
    instance's pixels. The reference pads the box to a centred square first; that only shifts and
    scales row + column, which the min-max scaling undoes. Instances whose box is 1 px wide or tall
    stay 0, as in the reference.
    """
    labels = _sequential(_check_instances(instances))
    out = np.zeros((4, *labels.shape), dtype=np.float32)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        height = box[0].stop - box[0].start
        width = box[1].stop - box[1].start
        if height < 2 or width < 2:
            continue
        rows, cols = np.nonzero(labels[box] == index)
        values = np.stack([
            cols * (2.0 / (width - 1)) - 1.0,
            rows * (2.0 / (height - 1)) - 1.0,
            _span(rows + cols),
            _span(cols - rows),
        ])
        out[:, rows + box[0].start, cols + box[1].start] = values
    return out


def regression_weight(instances: np.ndarray, config: TargetConfig) -> np.ndarray:
    """(H,W) float32: 1 on cells dilated by a disk of `regression_dilation` px, the background weight elsewhere.

    The distance maps are 0 on background by convention only; a small weight there keeps the
    prediction near 0 without letting the background dominate the loss.
    """
    cells = _check_instances(instances) > 0
    weight = np.full(cells.shape, config.regression_background_weight, dtype=np.float32)
    if not cells.any():
        return weight
    if config.regression_dilation == 0:
        near = cells
    else:
        near = flat_filter(cells, footprint("disk", config.regression_dilation), "max", False)
    weight[near] = 1.0
    return weight


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,H,W) float32 one-hot encoding of an (H,W) map of values 0..n-1 (SM1 with n=3, SM2 with K+1)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(f"labels must lie in 0..{n - 1}, found {labels.min()}..{labels.max()}")
    return (labels[None] == np.arange(n).reshape(n, *([1] * labels.ndim))).astype(np.float32)


def _check_instances(instances: np.ndarray) -> np.ndarray:
    labels = np.asarray(instances)
    if labels.ndim != 2:
        raise ValueError(f"an instance map must be 2-D (H,W), got shape {labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"an instance map must hold integer ids, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("instance ids must be >= 0 (0 = background)")
    return labels


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Ids small enough for `find_objects` (which lists every id up to the largest)."""
    if labels.size == 0 or int(labels.max()) <= labels.size:
        return labels
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    return inverse if labels.min() == 0 else inverse + 1


def _within_reach(labels: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Cell pixels whose `se` neighbourhood holds another cell: the max or min id there is not their own.

    Two flat filters of the label map instead of one dilation per instance. `labels` must come from
    `_sequential`, so that its ids and the stand-in for background in the min filter stay small
    (scipy passes the fill value through a float).
    """
    cells = labels > 0
    top = int(labels.max()) + 1 if labels.size else 1
    labels = labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.int64)
    highest = flat_filter(labels, se, "max", 0)
    lowest = flat_filter(np.where(cells, labels, labels.dtype.type(top)), se, "min", top)
    return cells & ((highest != labels) | (lowest != labels))


def _thin_strips(labels: np.ndarray, config: TargetConfig) -> np.ndarray:
    """Pieces of the larger-reach band that vanish under erosion (cisca.md 1a step 4)."""
    near = _within_reach(labels, footprint(config.near_shape, config.near_radius))
    if not near.any():
        return near
    core = ndi.minimum_filter(near, size=2 * config.near_erosion + 1, mode="nearest")  # border does not erode
    pieces, n = ndi.label(near, structure=_EIGHT)
    survives = np.zeros(n + 1, dtype=bool)
    survives[pieces[core]] = True
    return near & ~survives[pieces]


def _span(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [-1, 1]; a constant (a one-pixel-thick diagonal line) maps to 0."""
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) * (2.0 / (high - low)) - 1.0
