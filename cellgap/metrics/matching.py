"""Pairing rules of the references on a sparse list of overlapping pairs: IoU threshold, Hungarian, argmax.

Every function takes the pairs of an `OverlapTable` (GT index, prediction index, weight) and
returns a boolean mask over those pairs, so the caller keeps all the pair data in one place.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellgap.metrics.errors import EvaluationError


def match_by_iou(pair_gt: np.ndarray, pair_pred: np.ndarray, pair_iou: np.ndarray, threshold: float) -> np.ndarray:
    """Matched pairs for PQ: IoU strictly above `threshold` (HoVer-Net / CoNIC rule).

    At a threshold of 0.5 or more such pairs are unique by construction (two pairs sharing an
    instance cannot both exceed 0.5), so they are all kept. Below 0.5 the references solve a
    Hungarian assignment that maximises the summed IoU (not the number of pairs) and then drop
    the assigned pairs whose IoU is not above the threshold; so does this.
    """
    if threshold < 0.0:
        raise EvaluationError(f"the IoU threshold must be >= 0, got {threshold}")
    if threshold >= 0.5:
        return pair_iou > threshold
    return assign_max_weight(pair_gt, pair_pred, pair_iou) & (pair_iou > threshold)


def assign_max_weight(pair_gt: np.ndarray, pair_pred: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """One-to-one assignment that maximises the summed weight (scipy's Hungarian solver).

    Only what can change the optimum enters the solver: a pair whose GT and prediction overlap
    nothing else is always taken, and instances without any overlap are left out, so the matrix
    holds just the instances in contested overlaps.
    """
    chosen = np.zeros(pair_gt.shape, bool)
    if pair_gt.size == 0:
        return chosen
    alone = (np.bincount(pair_gt)[pair_gt] == 1) & (np.bincount(pair_pred)[pair_pred] == 1)
    chosen[alone] = weight[alone] > 0
    contested = np.flatnonzero(~alone)
    if contested.size == 0:
        return chosen
    rows, row_index = np.unique(pair_gt[contested], return_inverse=True)
    cols, col_index = np.unique(pair_pred[contested], return_inverse=True)
    dense = np.zeros((rows.size, cols.size), np.float64)
    dense[row_index, col_index] = weight[contested]
    position = np.full((rows.size, cols.size), -1, np.intp)
    position[row_index, col_index] = contested
    assigned_rows, assigned_cols = linear_sum_assignment(dense, maximize=True)
    picked = position[assigned_rows, assigned_cols]
    picked = picked[picked >= 0]
    chosen[picked] = weight[picked] > 0
    return chosen


def best_pair_per_gt(pair_gt: np.ndarray, pair_pred: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """For every GT with an overlap, its pair of largest weight; ties go to the lowest prediction index.

    This is `np.argmax` over each GT's row, as HoVer-Net's AJI does; a prediction may be chosen by
    several GTs.
    """
    chosen = np.zeros(pair_gt.shape, bool)
    if pair_gt.size == 0:
        return chosen
    order = np.lexsort((pair_pred, -weight, pair_gt))
    sorted_gt = pair_gt[order]
    first = np.ones(order.size, bool)
    first[1:] = sorted_gt[1:] != sorted_gt[:-1]
    chosen[order[first]] = True
    return chosen
