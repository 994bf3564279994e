"""The eight D4 views of a square tile (flips and 90 degree rotations), for numpy arrays and torch tensors.

A view is an optional horizontal flip (along the last axis) followed by k counter-clockwise
quarter turns in the (row, column) plane, applied to the two spatial axes given.
"""
from __future__ import annotations

from typing import Any

VIEW_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "flip", "flip_rot180", "rot180"),
    "d4": ("identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270"),
}
ALL_VIEWS: tuple[str, ...] = VIEW_SETS["d4"]


def parse_view(name: str) -> tuple[bool, int]:
    """(flip, quarter turns) of a view name."""
    if name not in ALL_VIEWS:
        raise ValueError(f"unknown view {name!r}; views are {', '.join(ALL_VIEWS)}")
    if name == "identity":
        return False, 0
    flip = name.startswith("flip")
    turns = int(name.rsplit("rot", 1)[1]) // 90 if "rot" in name else 0
    return flip, turns


def apply_view(array: Any, view: str, axes: tuple[int, int] = (-2, -1)) -> Any:
    """The view of a numpy array or torch tensor over its two spatial `axes` (rows, columns)."""
    flip, turns = parse_view(view)
    if hasattr(array, "dim"):  # torch
        import torch

        if flip:
            array = torch.flip(array, dims=(axes[1],))
        return torch.rot90(array, k=turns, dims=axes) if turns else array
    import numpy as np

    if flip:
        array = np.flip(array, axis=axes[1])
    return np.rot90(array, k=turns, axes=axes) if turns else array
