"""The single reduction from per-image statistics to the full `MetricsReport`."""
from __future__ import annotations

from collections.abc import Sequence
from functools import reduce as fold
from operator import add

import numpy as np

from cellgap.metrics.classes import ClassPQCounts, pad_to
from cellgap.metrics.conic import mpq_plus, multi_r2, pq_plus
from cellgap.metrics.detection import DetectionCounts, detection_scores
from cellgap.metrics.image import ImageStats
from cellgap.metrics.instance import INSTANCE_METRICS
from cellgap.metrics.pannuke import image_bpq, image_class_pq, nanmean, pannuke_summary
from cellgap.metrics.results import (
    ConicMetrics,
    DetectionMetrics,
    ImageMetrics,
    InstanceMetrics,
    MetricsReport,
    PanNukeMetrics,
    TissueMetrics,
)


def _by_class(values: dict[int, float]) -> dict[str, float]:
    return {str(c): v for c, v in values.items()}


def _class_stats(stats: ImageStats) -> tuple[ClassPQCounts, np.ndarray, np.ndarray]:
    """Class PQ counts and GT and predicted instances per class of a typed image."""
    assert stats.class_pq is not None and stats.gt_class_counts is not None and stats.pred_class_counts is not None
    return stats.class_pq, stats.gt_class_counts, stats.pred_class_counts


def reduce_stats(images: Sequence[ImageStats], *, n_classes: int | None = None, class_names: Sequence[str] = (),
                 radius: float = 12.0) -> MetricsReport:
    """Means over images (HoVer-Net instance scores, PanNuke), pooled counts (detection, CoNIC).

    An image where a metric is undefined is left out of that metric's mean; `instance.n_used`
    says how many images each instance metric used. Class metrics are None without classes.
    """
    typed = bool(images) and images[0].typed
    k = (n_classes or max((s.max_class for s in images), default=0)) if typed else 0
    class_ids = list(range(1, k + 1))
    names = {str(c): (class_names[c - 1] if c - 1 < len(class_names) else f"class {c}") for c in class_ids}

    per_image = np.array([[getattr(s.instance, m) for m in INSTANCE_METRICS] for s in images], np.float64)
    per_image = per_image.reshape(len(images), len(INSTANCE_METRICS))
    means = np.asarray(nanmean(per_image, axis=0))  # (metrics,): per_image is 2-D
    used = (~np.isnan(per_image)).sum(axis=0)
    instance = InstanceMetrics(**{m: means[i] for i, m in enumerate(INSTANCE_METRICS)},
                               n_used={m: int(used[i]) for i, m in enumerate(INSTANCE_METRICS)})

    pooled = fold(add, (s.detection for s in images), DetectionCounts.empty())
    det = detection_scores(pooled, class_ids)
    detection = DetectionMetrics(radius=radius, f1_d=det.f1_d, precision_d=det.precision_d, recall_d=det.recall_d,
                                 acc_type=det.acc_type if typed else None, f_c=_by_class(det.f_c))

    bpq = np.array([image_bpq(s.instance.pq, s.n_gt) for s in images], np.float64)
    if typed:  # then every image is (see EvaluationAccumulator)
        by_image = [_class_stats(s) for s in images]
        class_counts = fold(add, (counts for counts, _, _ in by_image), ClassPQCounts.empty())
        plus = pq_plus(class_counts, class_ids)
        true_counts = np.stack([pad_to(gt, k + 1)[: k + 1] for _, gt, _ in by_image])
        pred_counts = np.stack([pad_to(pred, k + 1)[: k + 1] for _, _, pred in by_image])
        r2, r2_per_class = multi_r2(true_counts, pred_counts, class_ids)
        conic = ConicMetrics(mpq_plus=mpq_plus(plus), pq_plus=_by_class(plus), r2=r2,
                             r2_per_class=_by_class(r2_per_class))
        class_pq = np.stack([image_class_pq(counts, class_ids) for counts, _, _ in by_image])
    else:
        conic = ConicMetrics(mpq_plus=None, pq_plus={}, r2=None, r2_per_class={})
        class_pq = None
    summary = pannuke_summary(class_pq, bpq, [s.tissue for s in images], class_ids)
    pannuke = PanNukeMetrics(
        mpq=summary.mpq if typed else None, bpq=summary.bpq, pq_per_class=_by_class(summary.pq_per_class),
        tissue={t: TissueMetrics(mpq=v[0] if typed else None, bpq=v[1]) for t, v in summary.tissue.items()},
    )
    rows = [
        ImageMetrics(name=s.name, tissue=s.tissue, n_gt=s.n_gt, n_pred=s.n_pred, **s.instance.as_dict(),
                     mpq=float(summary.image_mpq[i]), bpq=float(bpq[i]), tp_d=s.detection.tp, fp_d=s.detection.fp,
                     fn_d=s.detection.fn)
        for i, s in enumerate(images)
    ]
    return MetricsReport(n_images=len(images), class_names=names, instance=instance, detection=detection,
                         conic=conic, pannuke=pannuke, per_image=rows)
