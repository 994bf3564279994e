"""Nucleus segmentation metrics that reproduce the HoVer-Net, CoNIC and PanNuke evaluation code, vectorised.

Typical use: `acc = EvaluationAccumulator(n_classes=K)`, `acc.add(gt, pred, gt_cls, pred_cls)` per
image, then `acc.reduce().to_json_dict()`. See docs/metrics.md for the definitions and deviations.
"""
from __future__ import annotations

from cellgap.metrics.accumulate import EvaluationAccumulator
from cellgap.metrics.detection import RADIUS_AT_MAGNIFICATION
from cellgap.metrics.image import ImageStats, image_stats
from cellgap.metrics.reduce import reduce_stats
from cellgap.metrics.results import MetricsReport

__all__ = ["RADIUS_AT_MAGNIFICATION", "EvaluationAccumulator", "ImageStats", "MetricsReport", "image_stats",
           "reduce_stats"]
