"""Per-class scores: CoNIC mPQ+ and R^2, PanNuke mPQ/bPQ, the per-pixel class split."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cellgap.metrics import EvaluationAccumulator, image_stats
from cellgap.metrics.classes import InstanceClasses, class_pq_counts, instance_classes
from cellgap.metrics.conic import r2_score
from cellgap.metrics.overlaps import overlap_table, relabel_values
from cellgap.metrics.pannuke import pannuke_summary
from cellgap.metrics.runs import compress
from tests.metrics import metrics_oracle as oracle

PERFECT = 1 / (1 + 1e-6)  # SQ (and PQ) of a perfect match with the 1e-6 epsilon
PERFECT_PLUS = (1 / (1 + 1e-6)) ** 2  # CoNIC: DQ and SQ both carry it


def square(size: int, r: int, c: int, ident: int, out: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((size, size), np.int64) if out is None else out
    out[r:r + 4, c:c + 4] = ident
    return out


def test_spurious_class_costs_nothing_in_pannuke_mpq_but_counts_in_mpq_plus():
    size = 32
    # image 1: one class-1 nucleus, predicted perfectly, plus a spurious class-2 prediction
    gt1 = square(size, 2, 2, 5)
    pred1 = square(size, 2, 2, 8)
    spurious = square(size, 20, 20, 9, pred1.copy())
    # image 2: one class-2 nucleus, predicted perfectly (so class 2 exists in the data set)
    gt2 = square(size, 10, 10, 3)

    def evaluate(pred_first: np.ndarray) -> dict:
        acc = EvaluationAccumulator(n_classes=2)
        acc.add(gt1, pred_first, (gt1 > 0) * 1, np.where(pred_first == 9, 2, (pred_first > 0) * 1), tissue="t")
        acc.add(gt2, gt2, (gt2 > 0) * 2, (gt2 > 0) * 2, tissue="t")
        return acc.reduce().to_json_dict()

    clean, noisy = evaluate(pred1), evaluate(spurious)
    # PanNuke: class 2 is skipped on image 1 (no class-2 GT there), so mPQ and class PQs do not change
    # (bPQ does: it merges the classes, and the spurious nucleus is an FP there)
    assert noisy["pannuke"]["mpq"] == clean["pannuke"]["mpq"]
    assert noisy["pannuke"]["pq_per_class"] == clean["pannuke"]["pq_per_class"]
    assert noisy["pannuke"]["bpq"] < clean["pannuke"]["bpq"]
    assert noisy["pannuke"]["mpq"] == pytest.approx(PERFECT, abs=1e-15)
    # CoNIC: the pooled class-2 counts get one FP: DQ = 1 / (1 + 0.5 + 1e-6)
    assert clean["conic"]["pq_plus"]["2"] == pytest.approx(PERFECT_PLUS, abs=1e-15)
    assert noisy["conic"]["pq_plus"]["2"] == pytest.approx(1 / (1.5 + 1e-6) * PERFECT, abs=1e-15)
    assert noisy["conic"]["mpq_plus"] < clean["conic"]["mpq_plus"]


def test_mpq_plus_counts_a_class_absent_everywhere_as_zero():
    gt = square(32, 2, 2, 1)
    gt = square(32, 12, 12, 2, gt)
    cls = np.where(gt == 1, 1, np.where(gt == 2, 2, 0))
    acc = EvaluationAccumulator(n_classes=3)
    acc.add(gt, gt, cls, cls)
    conic = acc.reduce().conic
    assert conic.pq_plus == {"1": pytest.approx(PERFECT_PLUS), "2": pytest.approx(PERFECT_PLUS), "3": 0.0}
    assert conic.mpq_plus == pytest.approx(2 / 3 * PERFECT_PLUS, abs=1e-15)


def test_class_split_is_per_pixel_as_conic():
    # one GT instance: left half class 1, right half class 2; the prediction is the same instance, all class 1
    inst = np.zeros((4, 8), np.int64)
    inst[:, 2:6] = 4
    gt_cls = np.where(inst > 0, 1, 0)
    gt_cls[:, 4:6] = 2
    pred_cls = np.where(inst > 0, 1, 0)
    s = image_stats(inst, inst, gt_cls, pred_cls)
    # class 1: GT piece 8 px inside the 16 px prediction: IoU 0.5 exactly, no match
    assert (s.class_pq.tp[1], s.class_pq.fp[1], s.class_pq.fn[1]) == (0, 1, 1)
    assert (s.class_pq.tp[2], s.class_pq.fp[2], s.class_pq.fn[2]) == (0, 0, 1)
    # detection uses the majority class of the instance: both are class 1 (tie 8/8 -> lower id)
    assert s.detection.pair_types[1, 1] == 1


def random_typed(seed: int, size: int = 32, n: int = 9, mixed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int64)
    cls = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cy, cx, r = *rng.integers(0, size, 2), rng.integers(2, 7)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[disc] = (k + 1) * 7 + 2**33
        cls[disc] = rng.integers(1, 4)
    if mixed:
        cls[rng.random(cls.shape) < 0.15] = rng.integers(0, 4)
        cls[inst == 0] = 0
    return inst, cls


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("mixed", [False, True])
def test_class_counts_match_the_literal_split(seed, mixed):
    gt, gt_cls = random_typed(seed, mixed=mixed)
    pred, pred_cls = random_typed(seed + 77, mixed=mixed)
    s = image_stats(gt, pred, gt_cls, pred_cls)
    expected = oracle.class_pq_counts(gt, gt_cls, pred, pred_cls, 3)
    for c, (tp, fp, fn, iou_sum) in enumerate(expected, start=1):
        assert (s.class_pq.tp[c], s.class_pq.fp[c], s.class_pq.fn[c]) == (tp, fp, fn)
        assert s.class_pq.iou_sum[c] == pytest.approx(iou_sum, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_for_single_class_instances_equals_the_general_split(seed):
    gt, gt_cls = random_typed(seed)
    pred, pred_cls = random_typed(seed + 1)
    runs = compress(gt, pred, gt_cls, pred_cls)
    g, p = relabel_values(runs.sample(gt)), relabel_values(runs.sample(pred))
    gc, pc = runs.sample(gt_cls), runs.sample(pred_cls)
    table = overlap_table(g.labels, g.count, p.labels, p.count, weights=runs.lengths)
    gk, pk = instance_classes(g, gc, 4, runs.lengths), instance_classes(p, pc, 4, runs.lengths)
    assert gk.pure and pk.pure
    fast = class_pq_counts(g, gc, gk, p, pc, pk, table, 4, runs.lengths)
    slow = class_pq_counts(g, gc, InstanceClasses(gk.classes, False), p, pc, InstanceClasses(pk.classes, False),
                           table, 4, runs.lengths)
    for a, b in zip(fast.as_tuple(), slow.as_tuple()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_per_instance_classes_equal_a_painted_class_map():
    gt, gt_cls = random_typed(3)
    pred, pred_cls = random_typed(4)
    as_maps = image_stats(gt, pred, gt_cls, pred_cls)
    gt_dict = {int(i): int(gt_cls[gt == i][0]) for i in np.unique(gt) if i}
    pred_dict = {int(i): int(pred_cls[pred == i][0]) for i in np.unique(pred) if i}
    as_dicts = image_stats(gt, pred, gt_dict, pred_dict)
    for a, b in zip(as_maps.class_pq.as_tuple(), as_dicts.class_pq.as_tuple()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(as_maps.detection.pair_types, as_dicts.detection.pair_types)


def test_r2_follows_sklearn():
    # SS_res = 1, SS_tot = 2
    assert r2_score(np.array([1, 2, 3]), np.array([1, 2, 4])) == pytest.approx(0.5)
    assert r2_score(np.array([2, 2, 2]), np.array([2, 2, 2])) == 1.0  # constant GT, equal prediction
    assert r2_score(np.array([2, 2, 2]), np.array([2, 3, 2])) == 0.0  # constant GT, anything else
    assert math.isnan(r2_score(np.array([1]), np.array([1])))  # fewer than two samples
    assert r2_score(np.array([0, 1]), np.array([5, 5])) == pytest.approx(1 - (25 + 16) / 0.5)


def test_r2_uses_per_image_counts_per_class():
    acc = EvaluationAccumulator(n_classes=2)
    for n_gt, n_pred in ((1, 1), (2, 2), (3, 4)):
        gt = np.zeros((8, 40), np.int64)
        pred = np.zeros((8, 40), np.int64)
        for k in range(n_gt):
            gt[1:3, 4 * k:4 * k + 2] = k + 1
        for k in range(n_pred):
            pred[5:7, 4 * k:4 * k + 2] = k + 1
        acc.add(gt, pred, (gt > 0) * 1, (pred > 0) * 1)
    conic = acc.reduce().conic
    assert conic.r2_per_class == {"1": pytest.approx(0.5), "2": 1.0}  # class 2: always 0 and 0
    assert conic.r2 == pytest.approx(0.75)


def test_pannuke_reduction_is_tissue_weighted_by_hand():
    nan = math.nan
    class_pq = np.array([[0.8, nan], [0.2, 0.4], [nan, 0.9]])
    bpq = np.array([0.7, nan, 0.5])
    s = pannuke_summary(class_pq, bpq, ["A", "A", "B"], [1, 2])
    assert s.tissue["A"] == pytest.approx((0.55, 0.7)) and s.tissue["B"] == pytest.approx((0.9, 0.5))
    assert s.mpq == pytest.approx((0.55 + 0.9) / 2)  # not the mean over images (0.6667)
    assert s.bpq == pytest.approx(0.6)
    assert s.pq_per_class == {1: pytest.approx(0.5), 2: pytest.approx(0.65)}
    assert s.image_mpq.tolist() == pytest.approx([0.8, 0.3, 0.9])
    untissued = pannuke_summary(class_pq, bpq, ["", "", ""], [1, 2])
    assert untissued.tissue == {} and untissued.mpq == pytest.approx((0.8 + 0.3 + 0.9) / 3)
    partly = pannuke_summary(class_pq, bpq, ["A", "", "A"], [1, 2])
    assert set(partly.tissue) == {"A", "unknown"}


def test_pannuke_skips_images_with_empty_gt_for_bpq():
    gt = square(16, 2, 2, 1)
    empty = np.zeros_like(gt)
    acc = EvaluationAccumulator(n_classes=1)
    acc.add(gt, gt, gt, gt)
    acc.add(empty, gt, empty, gt)  # empty GT, one prediction: HoVer-Net PQ 0, PanNuke skips it
    report = acc.reduce()
    assert report.pannuke.bpq == pytest.approx(PERFECT, abs=1e-15)
    assert report.pannuke.mpq == pytest.approx(PERFECT, abs=1e-15)
    assert report.instance.pq == pytest.approx(PERFECT / 2, abs=1e-15)
    assert [row.bpq for row in report.per_image] == [pytest.approx(PERFECT), None]
