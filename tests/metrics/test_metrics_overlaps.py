"""Relabelling, run compression and the overlap table against direct per-pixel counting."""
from __future__ import annotations

import numpy as np
import pytest

from cellgap.metrics import overlaps
from cellgap.metrics.errors import EvaluationError
from cellgap.metrics.overlaps import overlap_table, relabel_values
from cellgap.metrics.runs import compress


def relabel(instances):
    return relabel_values(np.asarray(instances).ravel())


def test_relabel_keeps_id_order_with_gaps_and_huge_ids():
    m = np.array([[0, 2**31 - 1, 7], [7, 0, 123456789]], np.int32)
    r = relabel(m)
    assert r.ids.tolist() == [7, 123456789, 2**31 - 1]
    assert r.labels.tolist() == [0, 3, 1, 1, 0, 2]


def test_relabel_without_background_pixel():
    m = np.array([[5, 5], [9, 9]], np.int64)
    r = relabel(m)
    assert r.ids.tolist() == [5, 9]
    assert r.labels.tolist() == [1, 1, 2, 2]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64, bool])
def test_relabel_accepts_integer_dtypes(dtype):
    m = np.array([[0, 1], [1, 1]], dtype)
    assert relabel(m).labels.tolist() == [0, 1, 1, 1]


def test_relabel_rejects_negative_and_float_ids():
    with pytest.raises(EvaluationError, match=">= 0"):
        relabel(np.array([[0, -3]]))
    with pytest.raises(EvaluationError, match="integers"):
        relabel(np.array([[0.0, 1.0]]))


def test_relabel_values_table_and_sort_paths_agree():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 30, 500)
    huge = small.astype(np.int64) * 10**12  # forces the sort path
    a, b = relabel_values(small), relabel_values(huge)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.ids * 10**12, b.ids)


def test_runs_split_at_rows_and_where_any_map_changes():
    a = np.array([[1, 1, 1], [1, 1, 2]])
    b = np.array([[0, 0, 3], [0, 0, 0]])
    runs = compress(a, b)
    assert runs.starts.tolist() == [0, 2, 3, 5]
    assert runs.lengths.tolist() == [2, 1, 2, 1]
    # coordinate sums of the runs add up to those of the pixels
    assert runs.column_sums().sum() == np.tile(np.arange(3), 2).sum()
    assert runs.row_sums().sum() == 3


def _direct(gt: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], int]:
    out = {}
    for g in np.unique(gt[gt > 0]):
        for p in np.unique(pred[(gt == g) & (pred > 0)]):
            out[(int(g), int(p))] = int(((gt == g) & (pred == p)).sum())
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dense", [True, False])
def test_overlap_table_matches_direct_counting(seed, dense, monkeypatch):
    if not dense:  # many ids over few pixels: the table would dwarf the data, so the keys are sorted instead
        monkeypatch.setattr(overlaps, "_DENSE_CELLS", 0)
    n_gt_ids, n_pred_ids = (6, 8) if dense else (60, 80)
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, n_gt_ids, (9, 11)) * 1000003
    pred = rng.integers(0, n_pred_ids, (9, 11)) + 2**40
    pred[rng.random((9, 11)) < 0.3] = 0
    runs = compress(gt, pred)
    g, p = relabel_values(runs.sample(gt)), relabel_values(runs.sample(pred))
    decisions = []
    decide = overlaps.uses_dense_table
    monkeypatch.setattr(overlaps, "uses_dense_table", lambda *args: decisions.append(decide(*args)) or decisions[-1])
    table = overlap_table(g.labels, g.count, p.labels, p.count, weights=runs.lengths)
    assert decisions == [dense]  # the branch under test is the one taken
    got = {(int(g.ids[i]), int(p.ids[j])): int(n) for i, j, n in zip(table.pair_gt, table.pair_pred, table.pair_inter)}
    assert got == _direct(gt, pred)
    assert table.gt_area.tolist() == [int((gt == i).sum()) for i in g.ids]
    assert table.pred_area.tolist() == [int((pred == i).sum()) for i in p.ids]
    order = np.lexsort((table.pair_pred, table.pair_gt))
    assert np.array_equal(order, np.arange(order.size))  # sorted by GT, then prediction


@pytest.mark.parametrize("dense", [True, False])
def test_overlap_table_keep_mask_limits_intersections_not_areas(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(overlaps, "uses_dense_table", lambda cells, elements: False)
    gt = np.array([1, 1, 1, 0])
    pred = np.array([1, 1, 0, 1])
    keep = np.array([True, False, True, True])
    table = overlap_table(gt, 1, pred, 1, keep=keep)
    assert table.pair_inter.tolist() == [1]
    assert table.gt_area.tolist() == [3] and table.pred_area.tolist() == [3]


def test_overlap_table_of_empty_maps():
    table = overlap_table(np.zeros(4, np.intp), 0, np.zeros(4, np.intp), 0)
    assert table.n_gt == table.n_pred == table.pair_gt.size == 0
