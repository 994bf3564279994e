"""Accumulate per-image statistics, reduce once: the one code path of validation, evaluate, compare and the API."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cellgap.metrics.errors import EvaluationError
from cellgap.metrics.image import ClassInput, ImageStats, image_stats
from cellgap.metrics.reduce import reduce_stats
from cellgap.metrics.results import MetricsReport


class EvaluationAccumulator:
    """Add images one by one (or their precomputed `ImageStats`), then `reduce()` once.

    The number of classes K is `n_classes`, else the number of `class_names`, else the largest
    class id seen. Either every image is typed (class maps on both sides) or none is.
    """

    def __init__(self, *, n_classes: int | None = None, class_names: Sequence[str] = (), radius: float = 12.0,
                 match_iou: float = 0.5) -> None:
        if n_classes is not None and n_classes < 1:
            raise EvaluationError(f"the number of classes must be >= 1, got {n_classes}")
        if not radius > 0 or not math.isfinite(radius):
            raise EvaluationError(f"the detection radius must be a positive number of pixels, got {radius}")
        if not 0.0 <= match_iou < 1.0:
            raise EvaluationError(f"the IoU threshold must be in [0, 1), got {match_iou}")
        self.n_classes = n_classes if n_classes is not None else (len(class_names) or None)
        self.class_names = tuple(class_names)
        self.radius = float(radius)
        self.match_iou = float(match_iou)
        self._images: list[ImageStats] = []

    def __len__(self) -> int:
        return len(self._images)

    @property
    def images(self) -> tuple[ImageStats, ...]:
        return tuple(self._images)

    def add(self, gt_instances: np.ndarray, pred_instances: np.ndarray, gt_classes: ClassInput = None,
            pred_classes: ClassInput = None, *, tissue: str = "", name: str | None = None) -> ImageStats:
        """Score one image and keep its statistics (the name defaults to its position)."""
        stats = image_stats(gt_instances, pred_instances, gt_classes, pred_classes,
                            name=str(len(self._images)) if name is None else name, tissue=tissue,
                            radius=self.radius, match_iou=self.match_iou)
        self.add_stats(stats)
        return stats

    def add_stats(self, stats: ImageStats) -> None:
        """Keep statistics computed elsewhere (same radius and threshold assumed)."""
        if self._images and stats.typed != self._images[0].typed:
            raise EvaluationError(
                f"image {stats.name!r} is {'typed' if stats.typed else 'untyped'} but earlier images are not: "
                "class maps must be given for every image on both sides, or for none")
        if self.n_classes is not None and stats.max_class > self.n_classes:
            raise EvaluationError(f"image {stats.name!r} has class id {stats.max_class}, "
                                  f"but there are only {self.n_classes} classes")
        self._images.append(stats)

    def reduce(self) -> MetricsReport:
        """All metrics of the images added so far."""
        return reduce_stats(self._images, n_classes=self.n_classes, class_names=self.class_names,
                            radius=self.radius)
