"""Cell classes of instances: majority class, the per-class split of the maps, per-class PQ counts.

Class ids index the arrays here: slot c holds class c, slot 0 the pixels/instances without a
class; arrays from different images may have different lengths and are padded when added.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cellgap.metrics.errors import EvaluationError
from cellgap.metrics.matching import match_by_iou
from cellgap.metrics.overlaps import OverlapTable, Relabelled, overlap_table, relabel_values


def pad_to(values: np.ndarray, length: int) -> np.ndarray:
    """`values` (n, ...) zero-padded along the first axis to `length` (never shortened)."""
    if values.shape[0] >= length:
        return values
    widths = [(0, length - values.shape[0])] + [(0, 0)] * (values.ndim - 1)
    return np.pad(values, widths)


def add_padded(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise sum of two class-indexed arrays of possibly different lengths (any number of axes)."""
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))
    total = np.zeros(shape, np.result_type(a, b))
    total[tuple(slice(0, n) for n in a.shape)] += a
    total[tuple(slice(0, n) for n in b.shape)] += b
    return total


def check_class_values(classes: np.ndarray, what: str) -> np.ndarray:
    """Class ids as a flat intp array with values >= 0, or a clear error."""
    flat = np.asarray(classes).ravel()
    if flat.dtype.kind == "b":
        flat = flat.astype(np.uint8)
    if flat.dtype.kind not in "iu":
        raise EvaluationError(f"{what}: class maps must hold integers, got dtype {flat.dtype}")
    if flat.size and int(flat.min()) < 0:
        raise EvaluationError(f"{what}: class ids must be >= 0 (0 = no class), found {int(flat.min())}")
    return flat.astype(np.intp, copy=False)


def classes_from_instances(instances: Relabelled, classes: Mapping[int, int], what: str) -> np.ndarray:
    """The class of every element of `instances.labels` from per-instance classes {original id: class}.

    Ids not listed get class 0 (no class).
    """
    per_label = np.zeros(instances.count + 1, np.intp)
    per_label[1:] = [int(classes.get(int(i), 0)) for i in instances.ids]
    if per_label.min() < 0:
        raise EvaluationError(f"{what}: class ids must be >= 0, found {int(per_label.min())}")
    return per_label[instances.labels]


@dataclass(frozen=True)
class InstanceClasses:
    """The class of each instance: the most frequent nonzero class of its pixels.

    Ties go to the lower class id; an instance whose pixels are all class 0 gets 0. `pure` is
    True when no instance has pixels of two classes (then the per-class split keeps instances whole).
    """

    classes: np.ndarray  # (n,) intp
    pure: bool


def instance_classes(instances: Relabelled, classes: np.ndarray, n_slots: int,
                     weights: np.ndarray | None) -> InstanceClasses:
    """Majority class per instance from one bincount over (label, class) (`weights`: run lengths)."""
    n = instances.count
    hist = np.bincount(instances.labels * n_slots + classes, weights=weights, minlength=(n + 1) * n_slots)
    hist = hist.reshape(n + 1, n_slots)[1:]
    if n_slots == 1 or n == 0:
        return InstanceClasses(np.zeros(n, np.intp), True)
    typed = hist[:, 1:]
    best = np.argmax(typed, axis=1) + 1
    best[typed.max(axis=1) == 0] = 0
    pure = bool(((hist > 0).sum(axis=1) <= 1).all())
    return InstanceClasses(best.astype(np.intp), pure)


@dataclass(frozen=True)
class ClassPQCounts:
    """PQ counts per class (slot c = class c) of one image or summed over images."""

    tp: np.ndarray  # int64
    fp: np.ndarray  # int64
    fn: np.ndarray  # int64
    iou_sum: np.ndarray  # float64

    def __add__(self, other: ClassPQCounts) -> ClassPQCounts:
        return ClassPQCounts(*(add_padded(a, b) for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.tp, self.fp, self.fn, self.iou_sum

    def padded(self, n_slots: int) -> ClassPQCounts:
        return ClassPQCounts(*(pad_to(a, n_slots) for a in self.as_tuple()))

    @classmethod
    def empty(cls) -> ClassPQCounts:
        zero = np.zeros(1, np.int64)
        return cls(zero, zero, zero, np.zeros(1, np.float64))


def class_pq_counts(gt: Relabelled, gt_classes: np.ndarray, gt_kinds: InstanceClasses,
                    pred: Relabelled, pred_classes: np.ndarray, pred_kinds: InstanceClasses,
                    table: OverlapTable, n_slots: int, weights: np.ndarray | None,
                    match_iou: float = 0.5) -> ClassPQCounts:
    """Per-class PQ counts with CoNIC's split: class c compares `inst * (class == c)` of both maps.

    `gt_classes`/`pred_classes` are aligned with the labels (per pixel, or per run with `weights`).
    When every instance is of one class (the usual case) the split keeps instances whole and the
    instance overlap table is reused, keeping the pairs of equal class; otherwise the (instance,
    class) pieces are relabelled and counted in one more bincount.
    """
    if gt_kinds.pure and pred_kinds.pure:
        gt_piece_class, pred_piece_class = gt_kinds.classes, pred_kinds.classes
        pair_class = gt_piece_class[table.pair_gt]
        pieces = table.subset((pair_class == pred_piece_class[table.pair_pred]) & (pair_class > 0))
    else:
        gt_pieces = relabel_values(np.where((gt.labels > 0) & (gt_classes > 0), gt.labels * n_slots + gt_classes, 0))
        pred_pieces = relabel_values(np.where((pred.labels > 0) & (pred_classes > 0),
                                              pred.labels * n_slots + pred_classes, 0))
        gt_piece_class = (gt_pieces.ids % n_slots).astype(np.intp)
        pred_piece_class = (pred_pieces.ids % n_slots).astype(np.intp)
        pieces = overlap_table(gt_pieces.labels, gt_pieces.count, pred_pieces.labels, pred_pieces.count,
                               weights=weights, keep=gt_classes == pred_classes)
    return _count_by_class(pieces, gt_piece_class, pred_piece_class, n_slots, match_iou)


def _count_by_class(pieces: OverlapTable, gt_piece_class: np.ndarray, pred_piece_class: np.ndarray,
                    n_slots: int, match_iou: float) -> ClassPQCounts:
    """TP/FP/FN/summed IoU per class from a table whose pairs all join pieces of one class."""
    iou = pieces.pair_iou
    matched = match_by_iou(pieces.pair_gt, pieces.pair_pred, iou, match_iou)
    matched_class = gt_piece_class[pieces.pair_gt[matched]]
    tp = np.bincount(matched_class, minlength=n_slots).astype(np.int64)
    iou_sum = np.bincount(matched_class, weights=iou[matched], minlength=n_slots).astype(np.float64)
    n_gt = np.bincount(gt_piece_class, minlength=n_slots).astype(np.int64)
    n_pred = np.bincount(pred_piece_class, minlength=n_slots).astype(np.int64)
    tp[0] = n_gt[0] = n_pred[0] = 0  # class 0 is "no class": never a piece
    iou_sum[0] = 0.0
    return ClassPQCounts(tp=tp, fp=n_pred - tp, fn=n_gt - tp, iou_sum=iou_sum)
