"""Properties: renumbering instances changes nothing, a perfect prediction scores PQ ~ 1, the oracle agrees."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cellgap.metrics import image_stats
from tests.metrics import metrics_oracle as oracle

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def label_maps(draw, max_side: int = 12, max_id: int = 6) -> np.ndarray:
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return draw(arrays(np.int64, (h, w), elements=st.integers(0, max_id)))


@st.composite
def map_pairs(draw) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    gt = draw(label_maps())
    pred = draw(arrays(np.int64, gt.shape, elements=st.integers(0, 6)))
    gt_cls = draw(arrays(np.int64, gt.shape, elements=st.integers(0, 3))) * (gt > 0)
    pred_cls = draw(arrays(np.int64, gt.shape, elements=st.integers(0, 3))) * (pred > 0)
    return gt, pred, gt_cls, pred_cls


def renumber(instances: np.ndarray, seed: int, keep_order: bool) -> np.ndarray:
    """Map every id to a distinct large id (order kept or shuffled); 0 stays 0."""
    rng = np.random.default_rng(seed)
    ids = np.unique(instances[instances > 0])
    new = np.sort(rng.choice(2**31 - 2, size=ids.size, replace=False) + 1)
    if not keep_order:
        new = rng.permutation(new)
    lookup = dict(zip(ids.tolist(), new.tolist()))
    out = np.zeros_like(instances)
    for old, value in lookup.items():
        out[instances == old] = value
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@SETTINGS
@given(map_pairs(), st.integers(0, 2**32 - 1))
def test_any_renumbering_keeps_pq_dice_and_class_counts(maps, seed):
    gt, pred, gt_cls, pred_cls = maps
    before = image_stats(gt, pred, gt_cls, pred_cls)
    after = image_stats(renumber(gt, seed, False), renumber(pred, seed + 1, False), gt_cls, pred_cls)
    for name in ("pq", "dq", "sq", "dice1", "dice2"):
        assert same(getattr(before.instance, name), getattr(after.instance, name)), name
    for a, b in zip(before.class_pq.as_tuple(), after.class_pq.as_tuple()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before.gt_class_counts, after.gt_class_counts)


@SETTINGS
@given(map_pairs(), st.integers(0, 2**32 - 1))
def test_order_preserving_renumbering_changes_nothing_at_all(maps, seed):
    # ties (AJI's argmax, Hungarian) are broken by id order, as in the references
    gt, pred, gt_cls, pred_cls = maps
    before = image_stats(gt, pred, gt_cls, pred_cls)
    after = image_stats(renumber(gt, seed, True), renumber(pred, seed + 1, True), gt_cls, pred_cls)
    for name, value in before.instance.as_dict().items():
        assert same(value, getattr(after.instance, name)), name
    np.testing.assert_array_equal(before.detection.pair_types, after.detection.pair_types)
    np.testing.assert_array_equal(before.detection.unpaired_gt, after.detection.unpaired_gt)


@SETTINGS
@given(label_maps(max_side=16, max_id=9), st.integers(0, 2**32 - 1))
def test_a_perfect_prediction_scores_one(gt, seed):
    pred = renumber(gt, seed, False)
    s = image_stats(gt, pred)
    n = int(np.unique(gt[gt > 0]).size)
    if n == 0:
        assert math.isnan(s.instance.pq)
        return
    assert s.instance.dq == 1.0
    assert abs(s.instance.pq - 1.0) <= 1e-6 * n  # SQ = n / (n + 1e-6)
    assert s.instance.aji == s.instance.aji_plus == s.instance.dice1 == s.instance.dice2 == 1.0
    assert (s.detection.tp, s.detection.fp, s.detection.fn) == (n, 0, 0)


@SETTINGS
@given(map_pairs())
def test_pq_aji_and_dice_agree_with_the_literal_definitions(maps):
    gt, pred, _, _ = maps
    s = image_stats(gt, pred).instance
    dq, sq, pq, _ = oracle.pq(gt, pred)
    assert same(s.dq, dq) and same(s.sq, sq) and same(s.pq, pq)
    assert same(s.dice1, oracle.dice1(gt, pred)) and same(s.dice2, oracle.dice2(gt, pred))
    expected = oracle.aji(gt, pred)
    assert same(s.aji, expected) or abs(s.aji - expected) < 1e-12
