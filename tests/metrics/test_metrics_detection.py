"""Centroid detection and classification: radius, min-total-distance pairing, pooling, F_c."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cellgap.metrics import EvaluationAccumulator, image_stats
from cellgap.metrics.detection import DetectionCounts, centroids, detection_counts, detection_scores, pair_centroids
from cellgap.metrics.overlaps import relabel_values
from cellgap.metrics.runs import compress
from tests.metrics import metrics_oracle as oracle


def squares(size: int, centres: list[tuple[int, int]], ids: list[int] | None = None) -> np.ndarray:
    """3x3 squares centred on (row, col) with the given ids (1, 2, ... by default)."""
    out = np.zeros((size, size), np.int64)
    for k, (r, c) in enumerate(centres):
        out[r - 1:r + 2, c - 1:c + 2] = ids[k] if ids else k + 1
    return out


def counts(d: DetectionCounts) -> tuple[int, int, int]:
    return d.tp, d.fp, d.fn


@pytest.mark.parametrize(("offset", "paired"), [((0, 12), True), ((0, 13), False), ((1, 12), False), ((12, 0), True)])
def test_radius_is_inclusive(offset, paired):
    gt = squares(64, [(20, 20)])
    pred = squares(64, [(20 + offset[0], 20 + offset[1])])
    d = image_stats(gt, pred, radius=12).detection
    assert counts(d) == ((1, 0, 0) if paired else (0, 1, 1))


def test_min_total_distance_pairing_can_lose_a_pair_within_the_radius():
    # GT a = (x 42, y 30), b = (30, 30); predictions p = (30, 30), q = (30, 42) [as (x, y)].
    # a-p and b-q are both exactly 12 px (total 24), but a-q + b-p = 16.97 + 0 is smaller:
    # the assignment takes that one and then drops a-q (> 12 px). One pair, F_d = 0.5.
    gt = np.zeros((64, 64), np.int32)
    pred = np.zeros((64, 64), np.int32)
    gt[30, 42], gt[30, 30] = 1, 2
    pred[30, 30], pred[42, 30] = 1, 2
    d = image_stats(gt, pred, radius=12).detection
    assert counts(d) == (1, 1, 1)
    assert detection_scores(d).f1_d == 0.5


def test_pairing_distance_is_float64_like_cdist():
    # As float32 centroids these are 12.00000049 px apart in float64 (scipy's cdist, the reference),
    # but exactly 12.0 in float32 arithmetic: they must not pair at radius 12.
    gt = np.array([[89.846154, 59.6]], np.float32)
    pred = np.array([[96.619048, 69.505952]], np.float32)
    rows, cols = pair_centroids(gt, pred, 12)
    assert rows.size == 0 and cols.size == 0
    d = detection_counts(gt, np.zeros(1, np.int64), pred, np.zeros(1, np.int64), 12)
    assert counts(d) == (0, 1, 1)


def test_centroids_are_float32_means_of_column_and_row():
    m = np.array([[5, 5, 0], [0, 5, 0], [0, 0, 9]])
    runs = compress(m)
    r = relabel_values(runs.sample(m))
    pts = centroids(r, runs, runs.count(r.labels, r.count + 1)[1:])
    assert pts.dtype == np.float32
    assert pts.tolist() == [[np.float32(2 / 3), np.float32(1 / 3)], [2.0, 2.0]]


def test_instance_type_is_the_majority_nonzero_class():
    inst = np.ones((1, 6), np.int32)
    cls = np.array([[1, 1, 2, 0, 0, 0]], np.uint8)
    s = image_stats(inst, inst, cls, cls)
    assert s.detection.pair_types[1, 1] == 1
    tie = np.array([[2, 1, 0, 0, 0, 0]], np.uint8)  # tie between 1 and 2 -> the lower id
    assert image_stats(inst, inst, tie, tie).detection.pair_types[1, 1] == 1


def test_pooled_scores_and_f_c_by_hand():
    size = 64
    # image 1: GT types 1, 1, 2; predictions at the same places typed 1, 2, 2, plus a far type-1 prediction
    gt1 = squares(size, [(10, 10), (10, 40), (40, 10)])
    gt1_cls = np.where(gt1 > 0, np.array([0, 1, 1, 2])[gt1], 0)
    pred1 = squares(size, [(10, 10), (10, 40), (40, 10), (55, 55)], ids=[100, 7, 2**31 - 1, 3])
    pred1_cls = np.zeros_like(pred1)
    for ident, c in ((100, 1), (7, 2), (2**31 - 1, 2), (3, 1)):
        pred1_cls[pred1 == ident] = c
    # image 2: one GT nucleus of type 2 near the origin, empty prediction (no dummy centroid)
    gt2 = squares(size, [(3, 3)])
    gt2_cls = 2 * (gt2 > 0)
    acc = EvaluationAccumulator(n_classes=3)
    acc.add(gt1, pred1, gt1_cls, pred1_cls)
    acc.add(gt2, np.zeros_like(gt2), gt2_cls, np.zeros_like(gt2))
    det = acc.reduce().detection
    # pairs (gt, pred) types: (1,1), (1,2), (2,2); unpaired: one type-1 prediction, one type-2 GT
    assert det.f1_d == pytest.approx(6 / 8)
    assert det.precision_d == pytest.approx(3 / 4) and det.recall_d == pytest.approx(3 / 4)
    assert det.acc_type == pytest.approx(2 / 3)
    # F_1 = 2*1 / (2*1 + 2*0 + 2*1 + 1 + 0); F_2 = 2*1 / (2*1 + 2*1 + 2*0 + 0 + 1); class 3 absent -> null
    assert det.f_c == {"1": pytest.approx(2 / 5), "2": pytest.approx(2 / 5), "3": None}
    assert det.radius == 12.0


def test_empty_sides_contribute_only_unpaired_points():
    gt = squares(32, [(2, 2)])  # within 12 px of the origin, where the reference puts its dummy
    empty = np.zeros_like(gt)
    assert counts(image_stats(gt, empty).detection) == (0, 0, 1)
    assert counts(image_stats(empty, gt).detection) == (0, 1, 0)
    both = image_stats(empty, empty).detection
    assert counts(both) == (0, 0, 0)
    scores = detection_scores(both, [1])
    assert all(math.isnan(v) for v in (scores.f1_d, scores.precision_d, scores.recall_d, scores.acc_type,
                                        scores.f_c[1]))


def blobs(seed: int, size: int = 48, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int64)
    cls = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cy, cx, r = *rng.integers(0, size, 2), rng.integers(2, 6)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[disc] = (k + 1) * 104729
        cls[disc] = rng.integers(1, 4)
    return inst, cls


@pytest.mark.parametrize("seed", range(12))
def test_detection_matches_the_literal_definition(seed):
    gt, gt_cls = blobs(seed)
    pred, pred_cls = blobs(seed + 500)
    got = image_stats(gt, pred, gt_cls, pred_cls, radius=6).detection
    a, a_types = oracle.centroids_and_types(gt, gt_cls)
    b, b_types = oracle.centroids_and_types(pred, pred_cls)
    rows, cols = oracle.pair_points(a, b, 6)
    expected = detection_counts(a, a_types, b, b_types, 6)
    assert (got.tp, got.fp, got.fn) == (len(rows), len(b) - len(rows), len(a) - len(rows))
    np.testing.assert_array_equal(got.pair_types, expected.pair_types)
    pairs = np.zeros_like(expected.pair_types)
    np.add.at(pairs, (a_types[rows], b_types[cols]), 1)
    np.testing.assert_array_equal(got.pair_types, pairs)
