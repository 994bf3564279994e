"""The accumulate-then-reduce path: JSON shape, strictness, images used, errors, merging, the table."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from cellgap.core.errors import CellgapError
from cellgap.metrics import EvaluationAccumulator, image_stats
from cellgap.metrics.errors import EvaluationError
from cellgap.metrics.report import format_report

INSTANCE_KEYS = {"pq", "dq", "sq", "aji", "aji_plus", "dice1", "dice2", "n_used"}


def tile(seed: int, size: int = 40, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int32)
    cls = np.zeros((size, size), np.uint8)
    for k in range(n):
        r, c = rng.integers(0, size - 6, 2)
        inst[r:r + 5, c:c + 5] = k + 1
        cls[r:r + 5, c:c + 5] = rng.integers(1, 4)
    return inst, cls


def filled_accumulator(**kwargs) -> EvaluationAccumulator:
    acc = EvaluationAccumulator(**kwargs)
    for seed, tissue in ((0, "Breast"), (1, "Breast"), (2, "Colon")):
        gt, gt_cls = tile(seed)
        pred, pred_cls = tile(seed + 10)
        acc.add(gt, np.where(pred > 0, pred + 1000, 0), gt_cls, pred_cls, tissue=tissue, name=f"img{seed}")
    return acc


def test_json_has_exactly_the_documented_keys():
    out = filled_accumulator(class_names=("tumour", "lymphocyte", "stroma")).reduce().to_json_dict()
    assert set(out) == {"n_images", "class_names", "instance", "detection", "conic", "pannuke"}
    assert out["n_images"] == 3
    assert out["class_names"] == {"1": "tumour", "2": "lymphocyte", "3": "stroma"}
    assert set(out["instance"]) == INSTANCE_KEYS
    assert set(out["instance"]["n_used"]) == INSTANCE_KEYS - {"n_used"}
    assert set(out["detection"]) == {"radius", "f1_d", "precision_d", "recall_d", "acc_type", "f_c"}
    assert set(out["detection"]["f_c"]) == {"1", "2", "3"}
    assert set(out["conic"]) == {"mpq_plus", "pq_plus", "r2", "r2_per_class"}
    assert set(out["conic"]["pq_plus"]) == set(out["conic"]["r2_per_class"]) == {"1", "2", "3"}
    assert set(out["pannuke"]) == {"mpq", "bpq", "pq_per_class", "tissue"}
    assert set(out["pannuke"]["tissue"]) == {"Breast", "Colon"}
    assert set(out["pannuke"]["tissue"]["Colon"]) == {"mpq", "bpq"}
    json.dumps(out, allow_nan=False)


def test_untyped_images_give_null_class_metrics_and_keep_the_keys():
    acc = EvaluationAccumulator()
    gt, _ = tile(0)
    acc.add(gt, gt)
    out = acc.reduce().to_json_dict()
    assert out["class_names"] == {}
    assert out["detection"]["acc_type"] is None and out["detection"]["f_c"] == {}
    assert out["detection"]["f1_d"] == 1.0
    assert out["conic"] == {"mpq_plus": None, "pq_plus": {}, "r2": None, "r2_per_class": {}}
    assert out["pannuke"]["mpq"] is None and out["pannuke"]["pq_per_class"] == {}
    assert out["pannuke"]["bpq"] == pytest.approx(1 / (1 + 1e-6))
    assert out["pannuke"]["tissue"] == {}


def test_images_where_a_metric_is_undefined_are_left_out_and_counted():
    gt, _ = tile(0)
    empty = np.zeros_like(gt)
    acc = EvaluationAccumulator()
    acc.add(gt, gt)  # everything defined
    acc.add(empty, empty)  # nothing defined
    acc.add(gt, empty)  # AJI and DICE2 undefined
    report = acc.reduce()
    assert report.instance.n_used == {"pq": 2, "dq": 2, "sq": 2, "aji": 1, "aji_plus": 2, "dice1": 2, "dice2": 1}
    assert report.instance.aji == 1.0 and report.instance.dice2 == 1.0
    assert report.instance.dq == 0.5  # mean of 1 and 0 (the both-empty image is left out)
    text = json.dumps(report.to_json_dict(), allow_nan=False)
    only_empty = EvaluationAccumulator()
    only_empty.add(empty, empty)
    out = only_empty.reduce().to_json_dict()
    assert out["instance"]["pq"] is None and out["instance"]["n_used"]["pq"] == 0
    assert out["detection"]["f1_d"] is None
    assert "NaN" not in text + json.dumps(out, allow_nan=False)


def test_no_images_at_all():
    out = EvaluationAccumulator(n_classes=2).reduce().to_json_dict()
    assert out["n_images"] == 0 and out["instance"]["pq"] is None
    json.dumps(out, allow_nan=False)


def test_number_of_classes_from_argument_names_or_largest_id():
    assert list(filled_accumulator(n_classes=5).reduce().class_names) == ["1", "2", "3", "4", "5"]
    assert filled_accumulator(class_names=("a", "b", "c", "d")).reduce().class_names["4"] == "d"
    assert filled_accumulator().reduce().class_names == {"1": "class 1", "2": "class 2", "3": "class 3"}


def test_errors_are_clear_cellgap_errors():
    gt, cls = tile(0)
    with pytest.raises(EvaluationError, match="shape"):
        image_stats(gt, gt[:, :-1])
    with pytest.raises(EvaluationError, match="class map has shape"):
        image_stats(gt, gt, cls[:-1], cls)
    with pytest.raises(EvaluationError, match="2-D"):
        image_stats(gt[None], gt[None])
    acc = EvaluationAccumulator(n_classes=2)
    with pytest.raises(EvaluationError, match="only 2 classes"):
        acc.add(gt, gt, cls, np.where(cls > 0, 3, 0).astype(np.uint8))
    acc = EvaluationAccumulator()
    acc.add(gt, gt, cls, cls)
    with pytest.raises(EvaluationError, match="class maps must be given"):
        acc.add(gt, gt)
    with pytest.raises(EvaluationError):
        EvaluationAccumulator(radius=0)
    with pytest.raises(EvaluationError):
        EvaluationAccumulator(match_iou=1.5)
    assert issubclass(EvaluationError, CellgapError) and issubclass(EvaluationError, ValueError)


def test_pickled_stats_give_the_same_report():
    whole = filled_accumulator(n_classes=3)
    again = EvaluationAccumulator(n_classes=3)
    for stats in whole.images:
        again.add_stats(pickle.loads(pickle.dumps(stats)))
    assert again.reduce().to_json_dict() == whole.reduce().to_json_dict()


def test_per_image_rows_and_default_names():
    acc = EvaluationAccumulator()
    gt, _ = tile(1)
    acc.add(gt, gt)
    acc.add(gt, np.zeros_like(gt))
    rows = acc.reduce().per_image
    assert [r.name for r in rows] == ["0", "1"]
    assert rows[1].aji is None and rows[1].fn_d == rows[1].n_gt == 6 and rows[1].tp_d == 0


def test_readable_table():
    text = format_report(filled_accumulator(class_names=("tumour", "lymphocyte", "stroma")).reduce())
    for expected in ("3 images, 3 classes", "AJI+", "3/3", "radius 12 px", "1 tumour", "mPQ+", "Breast", "Colon"):
        assert expected in text
    empty = EvaluationAccumulator()
    empty.add(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32))
    assert " - " in format_report(empty.reduce()) or "-\n" in format_report(empty.reduce())


def test_classes_on_background_pixels_are_ignored():
    gt, cls = tile(4)
    noisy = np.where(gt == 0, 9, cls).astype(np.uint8)  # class 9 only where there is no instance
    acc = EvaluationAccumulator(n_classes=3)
    stats = acc.add(gt, gt, noisy, noisy)
    clean = image_stats(gt, gt, cls, cls)
    assert stats.max_class == clean.max_class <= 3
    for a, b in zip(stats.class_pq.as_tuple(), clean.class_pq.as_tuple()):
        np.testing.assert_array_equal(a, b)
