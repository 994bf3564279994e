"""CoNIC's pooled scores: PQ+ per class and mPQ+ from counts summed over images, multi-class R^2 of counts."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cellgap.metrics.classes import ClassPQCounts
from cellgap.metrics.instance import PQCounts, conic_pq


def pq_plus(counts: ClassPQCounts, class_ids: Sequence[int]) -> dict[int, float]:
    """PQ+ of each class from counts pooled over all images (CoNIC epsilons: never NaN, absent -> 0)."""
    padded = counts.padded(max(class_ids, default=0) + 1)
    return {
        c: conic_pq(PQCounts(int(padded.tp[c]), int(padded.fp[c]), int(padded.fn[c]), float(padded.iou_sum[c])))[2]
        for c in class_ids
    }


def mpq_plus(per_class: dict[int, float]) -> float:
    """Plain mean over all K classes, a class without GT or prediction counting as 0 (as CoNIC does)."""
    return float(np.mean(list(per_class.values()))) if per_class else math.nan


def r2_score(true: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination as scikit-learn's `r2_score` for one output (force_finite=True).

    NaN with fewer than two samples; with a constant GT column 1.0 if the predictions equal it,
    else 0.0.
    """
    true = np.asarray(true, np.float64)
    pred = np.asarray(pred, np.float64)
    if true.size < 2:
        return math.nan
    numerator = float(((true - pred) ** 2).sum())
    denominator = float(((true - true.mean()) ** 2).sum())
    if denominator == 0.0:
        return 1.0 if numerator == 0.0 else 0.0
    return 1.0 - numerator / denominator


def multi_r2(true_counts: np.ndarray, pred_counts: np.ndarray,
             class_ids: Sequence[int]) -> tuple[float, dict[int, float]]:
    """R^2 of per-image instance counts for each class and their mean (CoNIC's multi-class R^2).

    `true_counts`/`pred_counts` are (N images, slots) with column c = class c.
    """
    per_class = {c: r2_score(true_counts[:, c], pred_counts[:, c]) for c in class_ids}
    values = list(per_class.values())
    return (float(np.mean(values)) if values else math.nan), per_class
