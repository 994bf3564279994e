"""Small fixed kernels shared by targets, post-processing and the losses (numpy, no torch).

The directional kernels turn a distance map into its gradient along one direction. The same four
kernels find contours in post-processing and define the gradient (MSGE) loss, so they live here
once; the loss converts them with `torch.from_numpy`. The structuring elements and the flat
max/min filter with them serve the morphology of targets and post-processing.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

DIRECTIONS: tuple[str, ...] = ("h", "v", "tl", "bl")
"""Channel order of the distance maps and of `directional_kernels`."""

FootprintShape = Literal["disk", "square"]


def directional_kernels(size: int = 5) -> np.ndarray:
    """(4, size, size) float32 gradient kernels in channel order (h, v, tl, bl).

    With x the column offset (right > 0) and y the row offset (down > 0) from the centre:
    k_h = x / (x^2 + y^2), k_v = y / (x^2 + y^2), k_tl = k_h + k_v, k_bl = rot90(k_tl)
    = (x - y) / (x^2 + y^2); the centre is 0. They are meant for cross-correlation
    (`scipy.ndimage.correlate`, `torch.nn.functional.conv2d`): a map that grows towards the right
    (h), the bottom (v), the bottom-right (tl) or the top-right (bl) gives a positive response, and
    the jump from +1 to -1 between two touching cells a strongly negative one. Each kernel sums to 0,
    so the response ignores an offset of the map.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 3, got {size}")
    r = size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    d2 = x * x + y * y
    d2[r, r] = 1.0  # the centre weight is 0 either way (x = y = 0)
    k_h = x / d2
    k_v = y / d2
    k_tl = k_h + k_v
    k_bl = np.rot90(k_tl)
    return np.stack([k_h, k_v, k_tl, k_bl]).astype(np.float32)


def footprint(shape: FootprintShape, radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool structuring element: skimage's Euclidean disk (x^2 + y^2 <= r^2; disk(2) is the
    5x5 diamond of cisca.md) or its square."""
    from skimage.morphology import disk, footprint_rectangle

    if radius < 0:
        raise ValueError(f"footprint radius must be >= 0, got {radius}")
    if shape == "square":
        return footprint_rectangle((2 * radius + 1, 2 * radius + 1)).astype(bool)
    if shape == "disk":
        return disk(radius).astype(bool)
    raise ValueError(f"unknown footprint shape {shape!r}; expected 'disk' or 'square'")


def flat_filter(image: np.ndarray, se: np.ndarray, kind: Literal["max", "min"], cval: float | int) -> np.ndarray:
    """Max (grey dilation) or min (grey erosion) of `image` over the footprint `se` centred on each pixel.

    Equal to `scipy.ndimage.maximum_filter(image, footprint=se, mode="constant", cval=cval)` (or
    the minimum) for footprints whose rows are runs centred on the middle column, as disks and
    squares are, but several times faster: one 1-D filter per distinct run length, then a shifted
    maximum (or minimum) over the rows. Pixels outside the image count as `cval`.
    """
    rows, cols = se.shape
    if rows % 2 == 0 or cols % 2 == 0:
        raise ValueError(f"footprint sides must be odd, got {se.shape}")
    filter1d = ndi.maximum_filter1d if kind == "max" else ndi.minimum_filter1d
    combine = np.maximum if kind == "max" else np.minimum
    height = image.shape[0]
    fill = np.asarray(cval).astype(image.dtype)
    runs: list[tuple[int, int]] = []  # (row offset, run length)
    for i, row in enumerate(se):
        on = np.flatnonzero(row)
        if on.size == 0:
            continue
        width = int(on[-1] - on[0] + 1)
        if on.size != width or on[0] + on[-1] != cols - 1:
            raise ValueError("each footprint row must be one run centred on the middle column")
        runs.append((i - rows // 2, width))
    if not runs:
        raise ValueError("the footprint is empty")
    lines = {width: filter1d(image, width, axis=1, mode="constant", cval=cval) for width in {w for _, w in runs}}
    dy, width = min(runs, key=lambda run: abs(run[0]))
    out = _shift_rows(lines[width], dy, cval)
    for dy, width in runs:
        line = lines[width]
        if abs(dy) >= height:
            combine(out, fill, out=out)
        elif dy > 0:  # row y of the result takes row y + dy of the line, cval beyond the image
            combine(out[: height - dy], line[dy:], out=out[: height - dy])
            combine(out[height - dy :], fill, out=out[height - dy :])
        elif dy < 0:
            combine(out[-dy:], line[: height + dy], out=out[-dy:])
            combine(out[:-dy], fill, out=out[:-dy])
    return out


def _shift_rows(line: np.ndarray, dy: int, cval: float | int) -> np.ndarray:
    """A copy of `line` whose row y is row y + dy of `line` (cval beyond it)."""
    if dy == 0:
        return line.copy()
    out = np.full_like(line, cval)
    height = line.shape[0]
    if abs(dy) < height:
        if dy > 0:
            out[: height - dy] = line[dy:]
        else:
            out[-dy:] = line[: height + dy]
    return out


def magnification_defaults(data: Any, table: dict[int, dict[str, Any]]) -> Any:
    """Fill a config's raw fields with the sizes its magnification implies (explicit fields win).

    Used by `model_validator(mode="before")` of the target and post-processing configs; a value that
    is not a magnification is left for the field validator to report.
    """
    if not isinstance(data, dict):
        return data
    try:
        magnification = int(data.get("magnification", 40))
    except (TypeError, ValueError):
        return data
    return {**table.get(magnification, {}), **data}
