"""The per-image work of every metric: one run compression, one overlap table, pairing, per-class counts.

The result, `ImageStats`, is small and picklable, so images can be scored in parallel and added
to an `EvaluationAccumulator` in any order.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cellgap.metrics.classes import (
    ClassPQCounts,
    check_class_values,
    class_pq_counts,
    classes_from_instances,
    instance_classes,
)
from cellgap.metrics.detection import DetectionCounts, centroids, detection_counts
from cellgap.metrics.errors import EvaluationError
from cellgap.metrics.instance import InstanceScores, instance_scores
from cellgap.metrics.overlaps import Relabelled, check_same_shape, overlap_table, relabel_values
from cellgap.metrics.runs import Runs, compress

ClassInput = np.ndarray | Mapping[int, int] | None  # (H, W) class map, {instance id: class}, or none


@dataclass(frozen=True)
class ImageStats:
    """Everything the reduction needs from one image. Class fields are None for untyped images."""

    name: str
    tissue: str
    n_gt: int
    n_pred: int
    instance: InstanceScores
    detection: DetectionCounts
    class_pq: ClassPQCounts | None
    gt_class_counts: np.ndarray | None  # (slots,) instances per majority class
    pred_class_counts: np.ndarray | None
    max_class: int  # largest class id of an instance pixel in either map (0 when untyped)

    @property
    def typed(self) -> bool:
        return self.class_pq is not None


def image_stats(gt_instances: np.ndarray, pred_instances: np.ndarray, gt_classes: ClassInput = None,
                pred_classes: ClassInput = None, *, name: str = "", tissue: str = "", radius: float = 12.0,
                match_iou: float = 0.5) -> ImageStats:
    """Score one image. Instance ids are any non-negative integers (0 = background); classes are a
    class map of the same shape or per-instance classes {id: class}; class metrics need both sides.

    The maps are compressed into runs once; every count after that is a weighted bincount over runs.
    """
    what = f"image {name!r}" if name else "image"
    gt_instances, pred_instances = np.asarray(gt_instances), np.asarray(pred_instances)
    check_same_shape(gt_instances, pred_instances, what)
    typed = gt_classes is not None and pred_classes is not None
    class_maps = [c for c in (gt_classes, pred_classes) if typed and c is not None and not isinstance(c, Mapping)]
    for side, classes in zip(("ground truth", "prediction"), (gt_classes, pred_classes)):
        if (typed and classes is not None and not isinstance(classes, Mapping)
                and np.shape(classes) != np.shape(gt_instances)):
            raise EvaluationError(f"{what}, {side}: class map has shape {np.shape(classes)}, "
                                  f"instance map {np.shape(gt_instances)}")
    runs = compress(gt_instances, pred_instances, *class_maps)
    gt, pred = relabel_values(runs.sample(gt_instances)), relabel_values(runs.sample(pred_instances))
    table = overlap_table(gt.labels, gt.count, pred.labels, pred.count, weights=runs.lengths)
    scores = instance_scores(table, match_iou)
    gt_points, pred_points = centroids(gt, runs, table.gt_area), centroids(pred, runs, table.pred_area)
    if gt_classes is None or pred_classes is None:  # untyped
        detection = detection_counts(gt_points, np.zeros(gt.count, np.intp), pred_points,
                                     np.zeros(pred.count, np.intp), radius)
        return ImageStats(name, tissue, gt.count, pred.count, scores, detection, None, None, None, 0)
    # classes outside instances (background) play no part anywhere: set them to 0
    gt_run_classes = np.where(gt.labels > 0, _run_classes(gt_classes, gt, runs, f"{what}, ground truth"), 0)
    pred_run_classes = np.where(pred.labels > 0, _run_classes(pred_classes, pred, runs, f"{what}, prediction"), 0)
    max_class = int(max(gt_run_classes.max(initial=0), pred_run_classes.max(initial=0)))
    slots = max_class + 1
    gt_kinds = instance_classes(gt, gt_run_classes, slots, runs.lengths)
    pred_kinds = instance_classes(pred, pred_run_classes, slots, runs.lengths)
    class_pq = class_pq_counts(gt, gt_run_classes, gt_kinds, pred, pred_run_classes, pred_kinds, table, slots,
                               runs.lengths, match_iou)
    detection = detection_counts(gt_points, gt_kinds.classes, pred_points, pred_kinds.classes, radius)
    return ImageStats(
        name, tissue, gt.count, pred.count, scores, detection, class_pq,
        np.bincount(gt_kinds.classes, minlength=slots).astype(np.int64),
        np.bincount(pred_kinds.classes, minlength=slots).astype(np.int64),
        max_class,
    )


def _run_classes(classes: np.ndarray | Mapping[int, int], instances: Relabelled, runs: Runs, what: str) -> np.ndarray:
    """The class of every run, from a class map or from per-instance classes."""
    if isinstance(classes, Mapping):
        return classes_from_instances(instances, classes, what)
    return check_class_values(runs.sample(classes), what)
