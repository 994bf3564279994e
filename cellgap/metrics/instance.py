"""HoVer-Net's per-image instance scores: PQ, DQ, SQ, AJI, AJI+, DICE1 and DICE2 from one overlap table.

An image on which the reference crashes or returns NaN gives NaN here, so that the caller can
leave it out of that metric's mean and say so (see docs/metrics.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cellgap.metrics.matching import assign_max_weight, best_pair_per_gt, match_by_iou
from cellgap.metrics.overlaps import OverlapTable

SQ_EPSILON = 1.0e-6  # HoVer-Net, PanNuke and CoNIC: SQ = sum IoU / (TP + 1e-6)
DQ_EPSILON_CONIC = 1.0e-6  # CoNIC only: DQ = TP / (TP + FP/2 + FN/2 + 1e-6)
AJI_IOU_EPSILON = 1.0e-6  # HoVer-Net's AJI and AJI+ pick pairs by inter / (union + 1e-6)

INSTANCE_METRICS: tuple[str, ...] = ("pq", "dq", "sq", "aji", "aji_plus", "dice1", "dice2")


@dataclass(frozen=True)
class PQCounts:
    """What PQ needs from one image (or one class of one image): matched, spurious, missed, summed IoU."""

    tp: int
    fp: int
    fn: int
    iou_sum: float


@dataclass(frozen=True)
class InstanceScores:
    """One image's HoVer-Net scores (NaN where the reference is undefined) and its PQ counts."""

    pq: float
    dq: float
    sq: float
    aji: float
    aji_plus: float
    dice1: float
    dice2: float
    counts: PQCounts

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in INSTANCE_METRICS}


def hovernet_pq(counts: PQCounts) -> tuple[float, float, float]:
    """(DQ, SQ, PQ) as `get_fast_pq`: no epsilon in DQ, 1e-6 in SQ; NaN when both maps are empty."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    if tp + fp + fn == 0:
        return math.nan, math.nan, math.nan
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = counts.iou_sum / (tp + SQ_EPSILON)
    return dq, sq, dq * sq


def conic_pq(counts: PQCounts) -> tuple[float, float, float]:
    """(DQ, SQ, PQ) as CoNIC's `get_pq`: 1e-6 in both DQ and SQ, so empty inputs give 0."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    dq = tp / ((tp + 0.5 * fp + 0.5 * fn) + DQ_EPSILON_CONIC)
    sq = counts.iou_sum / (tp + SQ_EPSILON)
    return dq, sq, dq * sq


def pq_counts(table: OverlapTable, match_iou: float = 0.5) -> tuple[PQCounts, np.ndarray]:
    """PQ counts of one image and the boolean mask of matched pairs."""
    iou = table.pair_iou
    matched = match_by_iou(table.pair_gt, table.pair_pred, iou, match_iou)
    tp = int(matched.sum())
    counts = PQCounts(tp=tp, fp=table.n_pred - tp, fn=table.n_gt - tp, iou_sum=float(iou[matched].sum()))
    return counts, matched


def aji(table: OverlapTable) -> float:
    """MoNuSeg AJI as HoVer-Net's `get_fast_aji`: each GT takes its prediction of largest IoU.

    NaN when the prediction is empty (the reference raises there); 0.0 when only the GT is empty.
    """
    if table.n_pred == 0:
        return math.nan
    union = table.pair_union
    chosen = best_pair_per_gt(table.pair_gt, table.pair_pred, table.pair_inter / (union + AJI_IOU_EPSILON))
    return _aggregated_jaccard(table, chosen, union)


def aji_plus(table: OverlapTable) -> float:
    """AJI+ as HoVer-Net's `get_fast_aji_plus`: one-to-one pairs maximising the summed IoU.

    NaN when both maps are empty (0/0 in the reference); 0.0 when only one is.
    """
    union = table.pair_union
    chosen = assign_max_weight(table.pair_gt, table.pair_pred, table.pair_inter / (union + AJI_IOU_EPSILON))
    return _aggregated_jaccard(table, chosen, union)


def _aggregated_jaccard(table: OverlapTable, chosen: np.ndarray, union: np.ndarray) -> float:
    """Sum |G n P| over chosen pairs / (sum |G u P| over them + areas of GT and predictions left out)."""
    gt_paired = np.zeros(table.n_gt, bool)
    gt_paired[table.pair_gt[chosen]] = True
    pred_paired = np.zeros(table.n_pred, bool)
    pred_paired[table.pair_pred[chosen]] = True
    inter = int(table.pair_inter[chosen].sum())
    total = int(union[chosen].sum()) + int(table.gt_area[~gt_paired].sum()) + int(table.pred_area[~pred_paired].sum())
    return inter / total if total else math.nan


def dice1(table: OverlapTable) -> float:
    """Binary Dice of the two foregrounds; NaN when both are empty."""
    denominator = int(table.gt_area.sum()) + int(table.pred_area.sum())
    return 2.0 * int(table.pair_inter.sum()) / denominator if denominator else math.nan


def dice2(table: OverlapTable) -> float:
    """"Ensemble" Dice over every overlapping pair (no matching); NaN when no pair overlaps."""
    if table.pair_inter.size == 0:
        return math.nan
    markup = int(table.gt_area[table.pair_gt].sum()) + int(table.pred_area[table.pair_pred].sum())
    return 2.0 * int(table.pair_inter.sum()) / markup


def instance_scores(table: OverlapTable, match_iou: float = 0.5) -> InstanceScores:
    """All HoVer-Net instance scores of one image from its overlap table."""
    counts, _ = pq_counts(table, match_iou)
    dq, sq, pq = hovernet_pq(counts)
    return InstanceScores(pq=pq, dq=dq, sq=sq, aji=aji(table), aji_plus=aji_plus(table),
                          dice1=dice1(table), dice2=dice2(table), counts=counts)
