"""Evaluate a prediction source against a ground-truth source, and write the JSON and per-image CSV."""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from cellgap.core.errors import CellgapError
from cellgap.featurestore.datasets.base import LabelledImage, LabelSource
from cellgap.metrics.accumulate import EvaluationAccumulator
from cellgap.metrics.errors import EvaluationError
from cellgap.metrics.results import ImageMetrics, MetricsReport

logger = logging.getLogger(__name__)


def pair_images(gt_names: Sequence[str], pred_names: Sequence[str]) -> list[tuple[int, int]]:
    """(GT index, prediction index) pairs: by name when both name sets are equal, else by position.

    Position pairing needs equal counts; anything else is an error that says what differs.
    """
    if len(set(gt_names)) == len(gt_names) and set(gt_names) == set(pred_names) and len(pred_names) == len(gt_names):
        position = {name: i for i, name in enumerate(pred_names)}
        return [(i, position[name]) for i, name in enumerate(gt_names)]
    if len(gt_names) != len(pred_names):
        missing = sorted(set(gt_names) - set(pred_names))[:3]
        hint = f" (e.g. no prediction named {', '.join(map(repr, missing))})" if missing else ""
        raise EvaluationError(f"ground truth has {len(gt_names)} images but the prediction has {len(pred_names)}{hint}")
    if gt_names:
        logger.info("image names differ between ground truth and prediction: pairing %d images by position",
                    len(gt_names))
    return [(i, i) for i in range(len(gt_names))]


def _read(source: LabelSource, index: int, side: str) -> LabelledImage:
    """One labelled image, with unreadable files reported as an EvaluationError naming the image."""
    try:
        return source[index]
    except CellgapError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as error:
        raise EvaluationError(f"cannot read {side} image {index}: {error}") from error


def evaluate_sources(gt: LabelSource, pred: LabelSource, *, n_classes: int | None = None, radius: float = 12.0,
                     match_iou: float = 0.5) -> MetricsReport:
    """Score every paired image and reduce once. Classes are named by the GT source (else the prediction's)."""
    pairs = pair_images(list(gt.names), list(pred.names))
    class_names = tuple(gt.class_names) or tuple(pred.class_names)
    images = ((_read(gt, g, "ground-truth"), _read(pred, p, "prediction")) for g, p in pairs)
    return score_pairs(images, class_names=class_names, n_classes=n_classes, radius=radius, match_iou=match_iou)


def score_pairs(pairs: Iterable[tuple[LabelledImage, LabelledImage]], *, class_names: Sequence[str] = (),
                n_classes: int | None = None, radius: float = 12.0, match_iou: float = 0.5) -> MetricsReport:
    """Score (ground truth, prediction) pairs and reduce once: the one loop of `evaluate`, validation and the
    service. An image is typed when both sides have a class map; the GT's tissue and name label it."""
    accumulator = EvaluationAccumulator(n_classes=n_classes, class_names=tuple(class_names), radius=radius,
                                        match_iou=match_iou)
    one_sided = 0
    for truth, guess in pairs:
        typed = truth.classes is not None and guess.classes is not None
        one_sided += (truth.classes is None) != (guess.classes is None)
        accumulator.add(truth.instances, guess.instances, truth.classes if typed else None,
                        guess.classes if typed else None, tissue=truth.tissue, name=truth.name)
    if one_sided:
        logger.info("%d images have a class map on one side only: class metrics are null", one_sided)
    return accumulator.reduce()


def write_json(report: MetricsReport, path: Path) -> None:
    """Strict JSON (no NaN literals) of the documented keys."""
    text = json.dumps(report.to_json_dict(), indent=2, allow_nan=False)
    _write(path, text + "\n")


def write_per_image_csv(report: MetricsReport, path: Path) -> None:
    """One row per image; undefined values are empty cells."""
    columns = list(ImageMetrics.model_fields)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in report.per_image:
                writer.writerow({key: "" if value is None else value for key, value in row.model_dump().items()})
    except OSError as error:
        raise EvaluationError(f"cannot write {path}: {error}") from error


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise EvaluationError(f"cannot write {path}: {error}") from error
