"""HoVer-Net's centroid detection and classification scores: pairing within a radius, F_d, type accuracy, F_c.

Counts are pooled over images (`DetectionCounts` add up); scores are computed once at the end.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellgap.metrics.classes import add_padded, pad_to
from cellgap.metrics.overlaps import Relabelled
from cellgap.metrics.runs import Runs

RADIUS_AT_MAGNIFICATION: dict[int, float] = {40: 12.0, 20: 6.0}  # pixels, as in HoVer-Net's evaluation
F_C_WEIGHTS: tuple[int, int, int, int] = (2, 2, 1, 1)  # paired FP, paired FN, unpaired FP, unpaired FN


def radius_at(magnification: int | None) -> float:
    """Detection pairing radius in pixels for a magnification (40x when unknown)."""
    return RADIUS_AT_MAGNIFICATION.get(magnification or 40, 12.0)


def centroids(instances: Relabelled, runs: Runs, areas: np.ndarray) -> np.ndarray:
    """(n, 2) float32 (x, y) = mean (column, row) of each instance's pixels, cast as the reference does.

    `instances.labels` are per run of `runs`; coordinate sums are exact in float64.
    """
    n = instances.count
    if n == 0:
        return np.zeros((0, 2), np.float32)
    sum_x = np.bincount(instances.labels, weights=runs.column_sums(), minlength=n + 1)[1:]
    sum_y = np.bincount(instances.labels, weights=runs.row_sums(), minlength=n + 1)[1:]
    return np.stack([sum_x / areas, sum_y / areas], axis=1).astype(np.float32)


def pair_centroids(gt: np.ndarray, pred: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of paired (GT, prediction) points: minimum total distance over all points, then <= radius.

    As HoVer-Net's `pair_coordinates`: the assignment minimises the summed float64 Euclidean
    distance (scipy's `cdist`) over every point, and only then drops pairs farther than the radius;
    it is not a maximum matching within the radius, so a pair within reach can be lost.
    """
    if gt.shape[0] == 0 or pred.shape[0] == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty
    # the reference's cdist computes in float64 whatever the input dtype: cast the (float32) centroids first
    gt = gt.astype(np.float64)
    pred = pred.astype(np.float64)
    dx = gt[:, None, 0] - pred[None, :, 0]
    dy = gt[:, None, 1] - pred[None, :, 1]
    distance = np.sqrt(dx * dx + dy * dy)
    rows, cols = linear_sum_assignment(distance)
    keep = distance[rows, cols] <= float(radius)
    return rows[keep].astype(np.intp), cols[keep].astype(np.intp)


@dataclass(frozen=True)
class DetectionCounts:
    """Pooled pairing results: pairs by (GT type, predicted type), unpaired points by type.

    Type arrays are indexed by class id (0 = no class) and padded when added.
    """

    pair_types: np.ndarray  # (S, S) int64, [gt type, pred type]
    unpaired_gt: np.ndarray  # (S,) int64 missed GT points (FN) per GT type
    unpaired_pred: np.ndarray  # (S,) int64 spurious predictions (FP) per predicted type

    @property
    def tp(self) -> int:
        return int(self.pair_types.sum())

    @property
    def fn(self) -> int:
        return int(self.unpaired_gt.sum())

    @property
    def fp(self) -> int:
        return int(self.unpaired_pred.sum())

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(add_padded(self.pair_types, other.pair_types),
                               add_padded(self.unpaired_gt, other.unpaired_gt),
                               add_padded(self.unpaired_pred, other.unpaired_pred))

    @classmethod
    def empty(cls) -> DetectionCounts:
        return cls(np.zeros((1, 1), np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64))


def detection_counts(gt_points: np.ndarray, gt_types: np.ndarray, pred_points: np.ndarray, pred_types: np.ndarray,
                     radius: float) -> DetectionCounts:
    """Pair one image's centroids and count pairs and unpaired points by type.

    An empty side simply leaves the other side's points unpaired (HoVer-Net's dummy (0, 0)
    centroid for empty images is not reproduced; see docs/metrics.md).
    """
    paired_gt, paired_pred = pair_centroids(gt_points, pred_points, radius)
    slots = int(max(gt_types.max(initial=0), pred_types.max(initial=0))) + 1
    pair_types = np.bincount(gt_types[paired_gt] * slots + pred_types[paired_pred], minlength=slots * slots)
    gt_left = np.ones(gt_types.size, bool)
    gt_left[paired_gt] = False
    pred_left = np.ones(pred_types.size, bool)
    pred_left[paired_pred] = False
    return DetectionCounts(
        pair_types=pair_types.reshape(slots, slots).astype(np.int64),
        unpaired_gt=np.bincount(gt_types[gt_left], minlength=slots).astype(np.int64),
        unpaired_pred=np.bincount(pred_types[pred_left], minlength=slots).astype(np.int64),
    )


@dataclass(frozen=True)
class DetectionScores:
    """Pooled detection (F_d, precision, recall) and classification (type accuracy, F_c) scores."""

    f1_d: float
    precision_d: float
    recall_d: float
    acc_type: float
    f_c: dict[int, float]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def detection_scores(counts: DetectionCounts, class_ids: Sequence[int] = ()) -> DetectionScores:
    """Scores from pooled counts; NaN where a denominator is 0 (the reference crashes or gives NaN).

    F_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c) over the pairs whose GT or predicted
    type is c: the reference's TN_c term is always 0 after that restriction.
    """
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    slots = max([counts.pair_types.shape[0], *[c + 1 for c in class_ids]])
    pairs = add_padded(counts.pair_types, np.zeros((slots, slots), np.int64))
    missed, spurious = pad_to(counts.unpaired_gt, slots), pad_to(counts.unpaired_pred, slots)
    w_fp, w_fn, w_fp_d, w_fn_d = F_C_WEIGHTS
    f_c = {}
    for c in class_ids:
        tp_c = int(pairs[c, c])
        fp_c = int(pairs[:, c].sum()) - tp_c
        fn_c = int(pairs[c, :].sum()) - tp_c
        denominator = 2 * tp_c + w_fp * fp_c + w_fn * fn_c + w_fp_d * int(spurious[c]) + w_fn_d * int(missed[c])
        f_c[c] = _ratio(2 * tp_c, denominator)
    return DetectionScores(
        f1_d=_ratio(2 * tp, 2 * tp + fp + fn),
        precision_d=_ratio(tp, tp + fp),
        recall_d=_ratio(tp, tp + fn),
        acc_type=_ratio(int(np.trace(pairs)), tp),
        f_c=f_c,
    )
