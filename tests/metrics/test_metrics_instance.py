"""HoVer-Net instance scores on hand-made images, empty images, and against a literal oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cellgap.metrics import image_stats
from cellgap.metrics.matching import assign_max_weight, best_pair_per_gt, match_by_iou
from tests.metrics import metrics_oracle as oracle


def row(*values: int) -> np.ndarray:
    return np.array([values], np.int32)


def test_iou_exactly_half_is_not_a_match():
    # GT 2 px, prediction 1 px inside it: IoU = 1/2 exactly
    s = image_stats(row(1, 1), row(4, 0)).instance
    assert (s.counts.tp, s.counts.fp, s.counts.fn) == (0, 1, 1)
    assert s.pq == 0.0 and s.dq == 0.0
    # GT 3 px, prediction 2 px inside it: IoU 2/3 > 0.5
    s = image_stats(row(1, 1, 1), row(4, 4, 0)).instance
    assert s.counts.tp == 1
    assert s.sq == pytest.approx((2 / 3) / (1 + 1e-6), abs=1e-15)


def test_hand_made_image_all_scores():
    # GT A = px 0-3, B = px 5-6, C = px 8-9; prediction X = 0-2, Y = 5-7, Z = 9 (ids with gaps, huge)
    gt = row(10, 10, 10, 10, 0, 20, 20, 0, 30, 30)
    big = 2**31 - 1
    pred = row(big, big, big, 0, 0, 7, 7, 7, 0, 3)
    s = image_stats(gt, pred).instance
    # A-X IoU 3/4, B-Y 2/3 match; C-Z IoU 1/2 exactly does not
    assert (s.counts.tp, s.counts.fp, s.counts.fn) == (2, 1, 1)
    assert s.dq == 2 / 3  # no epsilon in HoVer-Net's DQ
    assert s.sq == pytest.approx((3 / 4 + 2 / 3) / (2 + 1e-6), abs=1e-15)
    assert s.pq == pytest.approx(s.dq * s.sq, abs=1e-15)
    assert s.aji == pytest.approx((3 + 2 + 1) / (4 + 3 + 2))  # every GT takes its best prediction
    assert s.aji_plus == pytest.approx(6 / 9)
    assert s.dice1 == pytest.approx(2 * 6 / (8 + 7))
    assert s.dice2 == pytest.approx(2 * 6 / ((4 + 3) + (2 + 3) + (2 + 1)))


def test_aji_lets_one_prediction_serve_several_gts_but_aji_plus_does_not():
    # GT A = px 0-1, B = px 2-3; one prediction X = px 0-3; an isolated prediction Y = px 5
    gt = row(1, 1, 2, 2, 0, 0)
    pred = row(9, 9, 9, 9, 0, 4)
    s = image_stats(gt, pred).instance
    assert s.aji == pytest.approx((2 + 2) / (4 + 4 + 1))  # X in both unions, Y never chosen
    assert s.aji_plus == pytest.approx(2 / (4 + 2 + 1))  # X pairs with one GT, the other GT is unpaired
    assert s.dice2 == pytest.approx(2 * 4 / ((2 + 4) + (2 + 4)))  # many-to-many, Y overlaps nothing
    assert s.dice1 == pytest.approx(2 * 4 / (4 + 5))
    assert s.pq == 0.0  # both IoUs are exactly 0.5


def test_perfect_single_instance_has_the_sq_epsilon():
    s = image_stats(row(3, 3), row(8, 8)).instance
    assert s.sq == 1 / (1 + 1e-6)
    assert s.pq == pytest.approx(0.999999000001, abs=1e-15)
    assert s.dq == 1.0 and s.aji == 1.0 and s.aji_plus == 1.0 and s.dice1 == 1.0 and s.dice2 == 1.0


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        # both empty: PQ/DQ/SQ crash, AJI crashes, AJI+ and DICE1 are 0/0, DICE2 crashes
        (row(0, 0), row(0, 0), dict(pq=None, dq=None, sq=None, aji=None, aji_plus=None, dice1=None, dice2=None)),
        # empty GT: zeros, except DICE2 (no overlapping pair)
        (row(0, 0), row(5, 0), dict(pq=0.0, dq=0.0, sq=0.0, aji=0.0, aji_plus=0.0, dice1=0.0, dice2=None)),
        # empty prediction: AJI crashes in the reference (argmax of an empty axis)
        (row(5, 0), row(0, 0), dict(pq=0.0, dq=0.0, sq=0.0, aji=None, aji_plus=0.0, dice1=0.0, dice2=None)),
        # disjoint maps: no overlapping pair for DICE2
        (row(5, 0), row(0, 6), dict(pq=0.0, dq=0.0, sq=0.0, aji=0.0, aji_plus=0.0, dice1=0.0, dice2=None)),
    ],
)
def test_empty_images_are_nan_exactly_where_the_reference_is_undefined(gt, pred, expected):
    values = image_stats(gt, pred).instance.as_dict()
    got = {k: (None if math.isnan(v) else v) for k, v in values.items()}
    assert got == expected


def test_threshold_below_half_maximises_summed_iou_not_pair_count():
    # A-X 0.9, A-Y 0.3, B-X 0.35: max summed IoU keeps A-X only (0.9 > 0.65), losing a pair
    pair_gt, pair_pred = np.array([0, 0, 1]), np.array([0, 1, 0])
    iou = np.array([0.9, 0.3, 0.35])
    assert match_by_iou(pair_gt, pair_pred, iou, 0.25).tolist() == [True, False, False]
    # the assigned pairs at or below the threshold are dropped
    assert match_by_iou(np.array([0, 1]), np.array([0, 1]), np.array([0.4, 0.2]), 0.2).tolist() == [True, False]
    # at 0.5 and above: every pair above the threshold, strictly
    assert match_by_iou(pair_gt, pair_pred, np.array([0.5, 0.51, 0.2]), 0.5).tolist() == [False, True, False]


def test_best_pair_per_gt_breaks_ties_towards_the_lowest_prediction():
    chosen = best_pair_per_gt(np.array([0, 0, 1, 1]), np.array([3, 1, 0, 2]), np.array([0.5, 0.5, 0.1, 0.7]))
    assert chosen.tolist() == [False, True, False, True]


@pytest.mark.parametrize("seed", range(8))
def test_assign_max_weight_reaches_the_optimum_of_the_full_matrix(seed):
    rng = np.random.default_rng(seed)
    dense = rng.random((7, 6)) * (rng.random((7, 6)) < 0.35)
    pair_gt, pair_pred = np.nonzero(dense)
    chosen = assign_max_weight(pair_gt, pair_pred, dense[pair_gt, pair_pred])
    assert len(set(pair_gt[chosen])) == chosen.sum() == len(set(pair_pred[chosen]))  # one-to-one
    rows, cols = linear_sum_assignment(dense, maximize=True)
    assert dense[pair_gt, pair_pred][chosen].sum() == pytest.approx(dense[rows, cols].sum(), abs=1e-12)


def blobs(seed: int, size: int = 24, n: int = 7, scale: int = 1) -> np.ndarray:
    """Overlapping random rectangles and discs, later ones on top; ids scattered."""
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(2, 6)
        shape = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if rng.random() < 0.5 else \
            ((abs(yy - cy) <= r) & (abs(xx - cx) <= rng.integers(1, 6)))
        out[shape] = (k + 1) * scale + rng.integers(0, 3) * 1000
    return out


@pytest.mark.parametrize("seed", range(25))
def test_instance_scores_match_the_literal_definitions(seed):
    gt, pred = blobs(seed), blobs(seed + 100, scale=7919)
    s = image_stats(gt, pred).instance
    dq, sq, pq, _ = oracle.pq(gt, pred)
    np.testing.assert_allclose([s.dq, s.sq, s.pq], [dq, sq, pq], rtol=0, atol=1e-15)
    assert s.aji == pytest.approx(oracle.aji(gt, pred), abs=1e-15, nan_ok=True)
    assert s.aji_plus == pytest.approx(oracle.aji(gt, pred, plus=True), abs=1e-15, nan_ok=True)
    assert s.dice1 == pytest.approx(oracle.dice1(gt, pred), abs=1e-15, nan_ok=True)
    assert s.dice2 == pytest.approx(oracle.dice2(gt, pred), abs=1e-15, nan_ok=True)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("thr", [0.1, 0.3, 0.7])
def test_pq_at_other_thresholds_matches_the_literal_definition(seed, thr):
    gt, pred = blobs(seed, n=9), blobs(seed + 50, n=9)
    s = image_stats(gt, pred, match_iou=thr).instance
    dq, sq, pq, (tp, _, _, _) = oracle.pq(gt, pred, thr)
    assert s.counts.tp == tp
    np.testing.assert_allclose([s.dq, s.sq, s.pq], [dq, sq, pq], rtol=0, atol=1e-12)
