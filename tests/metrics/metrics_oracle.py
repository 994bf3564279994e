"""Slow, literal implementations of the metric definitions (one boolean mask per instance), used as oracles.

Written from the definitions in shared/metrics.md, deliberately naive: per-instance masks over the
whole image, dense matrices over all instances, no shortcuts.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def masks(instances: np.ndarray) -> list[np.ndarray]:
    ids = [i for i in np.unique(instances) if i != 0]
    return [instances == i for i in ids]


def pairwise(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, list]:
    g, p = masks(gt), masks(pred)
    inter = np.zeros((len(g), len(p)))
    union = np.zeros((len(g), len(p)))
    for i, a in enumerate(g):
        for j, b in enumerate(p):
            inter[i, j] = (a & b).sum()
            union[i, j] = (a | b).sum()
    return inter, union, g, p


def pq(gt: np.ndarray, pred: np.ndarray, thr: float = 0.5, conic: bool = False) -> tuple[float, float, float, tuple]:
    inter, union, g, p = pairwise(gt, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)
    if thr >= 0.5:
        rows, cols = np.nonzero(iou > thr)
    else:
        rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
        keep = iou[rows, cols] > thr
        rows, cols = rows[keep], cols[keep]
    tp = len(rows)
    fp, fn = len(p) - tp, len(g) - tp
    s = iou[rows, cols].sum()
    if conic:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn + 1e-6)
    elif tp + fp + fn == 0:
        return math.nan, math.nan, math.nan, (0, 0, 0, 0.0)
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = s / (tp + 1e-6)
    return dq, sq, dq * sq, (tp, fp, fn, s)


def aji(gt: np.ndarray, pred: np.ndarray, plus: bool = False) -> float:
    inter, union, g, p = pairwise(gt, pred)
    if not plus and len(p) == 0:
        return math.nan
    iou = inter / (union + 1e-6)
    if plus:
        rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    else:
        rows, cols = np.arange(len(g)), (np.argmax(iou, axis=1) if len(g) else np.zeros(0, int))
    keep = iou[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]
    total_inter = inter[rows, cols].sum()
    total_union = union[rows, cols].sum()
    total_union += sum(m.sum() for i, m in enumerate(g) if i not in set(rows))
    total_union += sum(m.sum() for j, m in enumerate(p) if j not in set(cols))
    return total_inter / total_union if total_union else math.nan


def dice1(gt: np.ndarray, pred: np.ndarray) -> float:
    a, b = gt > 0, pred > 0
    d = a.sum() + b.sum()
    return 2 * (a & b).sum() / d if d else math.nan


def dice2(gt: np.ndarray, pred: np.ndarray) -> float:
    inter, union, g, p = pairwise(gt, pred)
    num = den = 0
    for i, a in enumerate(g):
        for j, b in enumerate(p):
            if inter[i, j] > 0:
                num += inter[i, j]
                den += a.sum() + b.sum()
    return 2 * num / den if den else math.nan


def centroids_and_types(instances: np.ndarray, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    pts, types = [], []
    for m in masks(instances):
        rows, cols = np.nonzero(m)
        pts.append([cols.mean(), rows.mean()])
        if classes is None:
            types.append(0)
        else:
            values = classes[m]
            values = values[values > 0]
            types.append(int(np.bincount(values).argmax()) if values.size else 0)
    return np.array(pts, np.float32).reshape(-1, 2), np.array(types, np.int64)


def pair_points(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = cdist(a, b)  # float64, whatever the dtype of the points, as HoVer-Net's pair_coordinates
    rows, cols = linear_sum_assignment(d)
    keep = d[rows, cols] <= radius
    return rows[keep], cols[keep]


def class_pq_counts(gt, gt_cls, pred, pred_cls, k: int, thr: float = 0.5) -> list[tuple]:
    """[(tp, fp, fn, iou_sum)] for classes 1..k with CoNIC's per-pixel split."""
    return [pq(gt * (gt_cls == c), pred * (pred_cls == c), thr, conic=True)[3] for c in range(1, k + 1)]
