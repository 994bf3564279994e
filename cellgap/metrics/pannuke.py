"""PanNuke's scores: per-image class PQ skipped where the class has no GT, nanmeans by image, class and tissue."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from cellgap.metrics.classes import ClassPQCounts
from cellgap.metrics.instance import PQCounts, hovernet_pq

UNKNOWN_TISSUE = "unknown"  # the name under which images without a tissue are grouped


@overload
def nanmean(values: np.ndarray, axis: None = None) -> float: ...


@overload
def nanmean(values: np.ndarray, axis: int) -> np.ndarray | float: ...


def nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean ignoring NaN; NaN (no warning) where nothing is left. A float without `axis` (or when the result is
    0-d), else an array."""
    values = np.asarray(values, np.float64)
    valid = ~np.isnan(values)
    count = valid.sum(axis=axis)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return float(mean) if np.ndim(mean) == 0 else mean


def image_class_pq(counts: ClassPQCounts, class_ids: Sequence[int]) -> np.ndarray:
    """(K,) PQ of each class in one image (HoVer-Net epsilons); NaN where the GT has no nucleus of it.

    A prediction of a class absent from the image's GT therefore costs nothing here.
    """
    padded = counts.padded(max(class_ids, default=0) + 1)
    values = np.full(len(class_ids), math.nan)
    for k, c in enumerate(class_ids):
        tp, fp, fn = int(padded.tp[c]), int(padded.fp[c]), int(padded.fn[c])
        if tp + fn > 0:
            values[k] = hovernet_pq(PQCounts(tp, fp, fn, float(padded.iou_sum[c])))[2]
    return values


def image_bpq(pq: float, n_gt: int) -> float:
    """Binary PQ of one image (all classes merged), NaN when its GT is empty."""
    return pq if n_gt > 0 else math.nan


@dataclass(frozen=True)
class PanNukeSummary:
    """Headline mPQ/bPQ (mean over tissues), class PQs (mean over images), per-tissue and per-image mPQ/bPQ."""

    mpq: float
    bpq: float
    pq_per_class: dict[int, float]
    tissue: dict[str, tuple[float, float]]  # name -> (mPQ, bPQ); empty when no tissue is known
    image_mpq: np.ndarray = field(compare=False)  # (N,) mPQ of each image (NaN without classes)


def pannuke_summary(class_pq: np.ndarray | None, bpq: np.ndarray, tissues: Sequence[str],
                    class_ids: Sequence[int]) -> PanNukeSummary:
    """Reduce per-image values the way PanNuke's run.py does.

    `class_pq` (N, K) per-image class PQs (None without classes), `bpq` (N,) per-image bPQ. Image
    mPQ = nanmean over classes; tissue values = nanmean over its images; headline = nanmean over
    the tissues present (images without a tissue form one group).
    """
    n = bpq.shape[0]
    image_mpq = np.asarray(nanmean(class_pq, axis=1)) if class_pq is not None and class_pq.shape[1] else np.full(n, math.nan)
    names = [t if t else UNKNOWN_TISSUE for t in tissues]
    groups = sorted(set(names))
    per_tissue: dict[str, tuple[float, float]] = {}
    for group in groups:
        members = np.array([name == group for name in names], bool)
        per_tissue[group] = (nanmean(image_mpq[members]), nanmean(bpq[members]))
    mpq = nanmean(np.array([v[0] for v in per_tissue.values()])) if groups else math.nan
    bpq_all = nanmean(np.array([v[1] for v in per_tissue.values()])) if groups else math.nan
    per_class = {}
    if class_pq is not None:
        per_class = {c: nanmean(class_pq[:, k]) for k, c in enumerate(class_ids)}
    known = any(t for t in tissues)
    return PanNukeSummary(mpq=mpq, bpq=bpq_all, pq_per_class=per_class, tissue=per_tissue if known else {},
                          image_mpq=image_mpq)
