"""Relabelling of arbitrary instance ids and the GT x prediction overlap table, built in one bincount."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellgap.metrics.errors import EvaluationError

# A dense bincount table is used while it has at most this many cells (or 4 per element, if more).
_DENSE_CELLS = 1 << 22


@dataclass(frozen=True)
class Relabelled:
    """Instance ids renumbered to 1..n in ascending order of the original id (0 stays background).

    `labels` holds the new label of each element (pixel or run); `ids` (n,) int64 the original id
    of label k+1. The order is the one HoVer-Net's `remap_label` gives, so ties broken "by lowest
    id" agree with the references.
    """

    labels: np.ndarray
    ids: np.ndarray

    @property
    def count(self) -> int:
        return int(self.ids.size)


def check_instance_dtype(values: np.ndarray) -> np.ndarray:
    """Integer ids as a flat array (booleans accepted), or a clear error."""
    flat = np.asarray(values).ravel()
    if flat.dtype.kind == "b":
        return flat.astype(np.uint8)
    if flat.dtype.kind not in "iu":
        raise EvaluationError(f"instance maps must hold integers, got dtype {flat.dtype}")
    return flat


def relabel_values(values: np.ndarray) -> Relabelled:
    """Renumber a 1-D array of ids (any non-negative integers below 2^63, gaps allowed) to 1..n.

    A lookup table is used when the largest id is small compared with the array, a sort otherwise.
    """
    values = check_instance_dtype(values)
    if values.size == 0:
        return Relabelled(np.zeros(0, np.intp), np.zeros(0, np.int64))
    if values.dtype == np.uint64 and int(values.max()) > np.iinfo(np.int64).max:
        raise EvaluationError(f"instance ids must be below 2^63, found {int(values.max())}")
    values = values.astype(np.int64, copy=False)
    low, high = int(values.min()), int(values.max())
    if low < 0:
        raise EvaluationError(f"instance ids must be >= 0 (0 = background), found {low}")
    if high <= 4 * values.size + 1024:
        present = np.bincount(values, minlength=high + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        table = np.zeros(high + 1, np.intp)
        table[ids] = np.arange(1, ids.size + 1)
        return Relabelled(table[values], ids.astype(np.int64))
    ids, inverse = np.unique(values, return_inverse=True)
    labels = inverse.astype(np.intp, copy=False).ravel()
    if ids[0] != 0:
        return Relabelled(labels + 1, ids)
    return Relabelled(labels, ids[1:])


@dataclass(frozen=True)
class OverlapTable:
    """Areas of all instances and intersections of every overlapping (GT, prediction) pair.

    Indices are 0-based label indices (label k+1 -> index k). Pairs are sorted by GT, then
    prediction index (the order in which the references sum their IoUs).
    """

    gt_area: np.ndarray  # (n_gt,) int64 pixels
    pred_area: np.ndarray  # (n_pred,) int64 pixels
    pair_gt: np.ndarray  # (m,) intp
    pair_pred: np.ndarray  # (m,) intp
    pair_inter: np.ndarray  # (m,) int64 pixels, all > 0

    @property
    def n_gt(self) -> int:
        return int(self.gt_area.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_area.size)

    @property
    def pair_union(self) -> np.ndarray:
        """(m,) int64 |G u P| of each pair."""
        return self.gt_area[self.pair_gt] + self.pred_area[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> np.ndarray:
        """(m,) float64 IoU without epsilon, as the references' PQ computes it."""
        return self.pair_inter / self.pair_union

    def subset(self, pairs: np.ndarray) -> OverlapTable:
        """The same instances with only the selected pairs (boolean mask or indices)."""
        return OverlapTable(self.gt_area, self.pred_area, self.pair_gt[pairs], self.pair_pred[pairs],
                            self.pair_inter[pairs])


def uses_dense_table(cells: int, elements: int) -> bool:
    """A dense bincount while the table stays small next to the data; else one sort of the keys."""
    return cells <= max(_DENSE_CELLS, 4 * elements)


def overlap_table(gt_labels: np.ndarray, n_gt: int, pred_labels: np.ndarray, n_pred: int,
                  weights: np.ndarray | None = None, keep: np.ndarray | None = None) -> OverlapTable:
    """Count every (GT label, prediction label) combination in one bincount (one sort if huge).

    `gt_labels`/`pred_labels` are aligned 1-D label arrays (0..n) over pixels, or over runs with
    `weights` = run lengths. `keep` (bool, aligned) limits the intersections to some elements; the
    areas always count everything.
    """
    stride = n_pred + 1
    cells = (n_gt + 1) * stride
    key = gt_labels * stride + pred_labels
    dense = uses_dense_table(cells, key.size)
    if keep is None and dense:
        table = np.bincount(key, weights=weights, minlength=cells).astype(np.int64).reshape(n_gt + 1, stride)
        inner = table[1:, 1:]
        pair_gt, pair_pred = np.nonzero(inner)
        return OverlapTable(table[1:].sum(axis=1), table[:, 1:].sum(axis=0), pair_gt.astype(np.intp),
                            pair_pred.astype(np.intp), inner[pair_gt, pair_pred])
    if keep is not None:
        key = np.where(keep, key, 0)  # cell (0, 0) is background: never a pair
    if dense:
        counts = np.bincount(key, weights=weights, minlength=cells).astype(np.int64)
        cell = np.flatnonzero(counts)
        inter = counts[cell]
    else:
        cell, index = np.unique(key, return_inverse=True)
        inter = np.bincount(index.ravel(), weights=weights, minlength=cell.size).astype(np.int64)
    pair_gt, pair_pred = np.divmod(cell, stride)
    real = (pair_gt > 0) & (pair_pred > 0)
    return OverlapTable(
        gt_area=np.bincount(gt_labels, weights=weights, minlength=n_gt + 1)[1:].astype(np.int64),
        pred_area=np.bincount(pred_labels, weights=weights, minlength=stride)[1:].astype(np.int64),
        pair_gt=(pair_gt[real] - 1).astype(np.intp),
        pair_pred=(pair_pred[real] - 1).astype(np.intp),
        pair_inter=inter[real],
    )


def check_same_shape(gt: np.ndarray, pred: np.ndarray, what: str) -> None:
    """Raise a clear error when two maps that must align do not."""
    if np.shape(gt) != np.shape(pred):
        raise EvaluationError(f"{what}: ground truth has shape {np.shape(gt)}, prediction {np.shape(pred)}")
    if np.ndim(gt) != 2:
        raise EvaluationError(f"{what}: expected 2-D (H, W) maps, got shape {np.shape(gt)}")
