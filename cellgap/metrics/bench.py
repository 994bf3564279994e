"""`cellgap bench metrics`: per-image time and PQ of cellgap against the cellseg-metrics package, same tiles."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Protocol, TypeVar

import numpy as np
from scipy import ndimage

from cellgap.metrics.image import image_stats

DENSITIES: tuple[int, ...] = (8, 40, 300)  # nuclei per 256x256 tile: few, typical, crowded
_ID_LIMIT = 2**31 - 1
T = TypeVar("T")


class LabelledTile(Protocol):
    """A generated GT tile, as `make_tile` gives it (featurestore's `SyntheticTile`)."""

    @property
    def instances(self) -> np.ndarray: ...

    @property
    def classes(self) -> np.ndarray: ...


def perturb(instances: np.ndarray, classes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A realistic imperfect prediction of a GT tile: some nuclei dropped, shifted, eroded, dilated,
    mis-classified, some spurious blobs added, and every id replaced by a random large id."""
    rng = np.random.default_rng(seed)
    n = int(instances.max())
    class_of = np.zeros(n + 1, np.int64)
    class_of[instances.ravel()] = classes.ravel()
    pred = instances.astype(np.int64)
    role = rng.choice(5, size=n + 1, p=[0.05, 0.25, 0.15, 0.15, 0.40])  # drop, shift, erode, dilate, keep
    role[0] = 4
    pred[role[pred] == 0] = 0
    # shift by up to 3 px (pixels moved onto neighbours overwrite them, as overlapping blobs would)
    offsets = rng.integers(-3, 4, size=(n + 1, 2))
    rows, cols = np.nonzero(role[pred] == 1)
    labels = pred[rows, cols]
    pred[rows, cols] = 0
    h, w = pred.shape
    pred[np.clip(rows + offsets[labels, 0], 0, h - 1), np.clip(cols + offsets[labels, 1], 0, w - 1)] = labels
    # erode: drop boundary pixels (a 4-neighbour with another id)
    padded = np.pad(pred, 1, mode="edge")
    boundary = np.zeros(pred.shape, bool)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        boundary |= padded[dr:dr + h, dc:dc + w] != pred
    pred[(role[pred] == 2) & boundary] = 0
    # dilate into background by one pixel
    grown = ndimage.grey_dilation(np.where(role[pred] == 3, pred, 0), size=(3, 3))
    pred = np.where((pred == 0) & (grown > 0), grown, pred)
    # spurious round blobs on background
    extra = max(1, n // 20)
    radius = max(2, int(np.sqrt(max((instances > 0).mean(), 0.05) * h * w / max(n, 1) / np.pi)))
    yy, xx = np.mgrid[:h, :w]
    for k, (cy, cx) in enumerate(zip(rng.integers(0, h, extra), rng.integers(0, w, extra))):
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius) & (pred == 0)
        pred[disc] = n + 1 + k
    class_of = np.concatenate([class_of, rng.integers(1, max(int(classes.max()), 1) + 1, extra)])
    flip = rng.random(class_of.size) < 0.1
    class_of[flip] = rng.integers(1, max(int(classes.max()), 1) + 1, int(flip.sum()))
    class_of[0] = 0
    pred_classes = class_of[pred].astype(np.uint8)
    new_ids = np.zeros(n + extra + 1, np.int64)
    new_ids[1:] = rng.choice(_ID_LIMIT, size=n + extra, replace=False) + 1
    return new_ids[pred].astype(np.int32), pred_classes


@dataclass(frozen=True)
class BenchRow:
    """One density: mean nuclei per tile, per-image milliseconds of each, speed-up, largest PQ difference."""

    nuclei: float
    cellgap_ms: float
    reference_ms: float
    max_pq_difference: float

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.cellgap_ms


def _reference_scores(reference: ModuleType, gt: np.ndarray, pred: np.ndarray) -> float:
    """The reference library's PQ, with its AJI computed too so that both sides do the same work."""
    pq = reference.panoptic_quality(gt, pred)["pq"]
    reference.aggregated_jaccard_index(gt, pred)
    return pq


def _best_ms(work: Callable[[], T], repeats: int) -> tuple[float, T]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        best = min(best, (time.perf_counter() - start) * 1e3)
    if result is None:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return best, result


def run_benchmark(reference: ModuleType, make_tile: Callable[..., LabelledTile], *, tiles: int = 5, seed: int = 0,
                  size: int = 256, densities: Sequence[int] = DENSITIES, repeats: int = 3) -> list[BenchRow]:
    """Time both on the same tiles (best of `repeats` per tile, mean over tiles).

    cellgap computes every per-image statistic (PQ, AJI, AJI+, Dice, per-class counts, centroid
    pairing); cellseg-metrics computes `panoptic_quality` and `aggregated_jaccard_index` only (it has
    no centroid detection), so the comparison favours it.
    """
    rows = []
    for density in densities:
        scale = size * size / (256 * 256)
        ours, theirs, nuclei, worst = [], [], [], 0.0
        for t in range(tiles):
            tile = make_tile(seed + t, size=size, n_classes=3, n_nuclei=max(1, round(density * scale)))
            gt, gt_classes = tile.instances, tile.classes
            pred, pred_classes = perturb(gt, gt_classes, seed + 1000 + t)
            ms, stats = _best_ms(partial(image_stats, gt, pred, gt_classes, pred_classes), repeats)
            ours.append(ms)
            ms, pq = _best_ms(partial(_reference_scores, reference, gt, pred), repeats)
            theirs.append(ms)
            nuclei.append(stats.n_gt)
            worst = max(worst, abs(stats.instance.pq - float(pq)))
        rows.append(BenchRow(float(np.mean(nuclei)), float(np.mean(ours)), float(np.mean(theirs)), worst))
    return rows


def format_bench(rows: Sequence[BenchRow], tiles: int) -> str:
    """The table `cellgap bench metrics` prints."""
    header = (f"{'nuclei/tile':>11}  {'cellgap ms/image':>16}  {'cellseg-metrics ms/image':>24}  "
              f"{'speed-up':>8}  {'max |dPQ|':>9}")
    lines = [f"metrics benchmark: {tiles} synthetic tiles per density, perturbed predictions", header]
    for row in rows:
        lines.append(f"{row.nuclei:>11.1f}  {row.cellgap_ms:>16.2f}  {row.reference_ms:>24.2f}  "
                     f"{row.speedup:>7.1f}x  {row.max_pq_difference:>9.1e}")
    lines.append("cellgap: PQ, AJI, AJI+, DICE1/2, per-class counts and centroid pairing; cellseg-metrics: "
                 "panoptic_quality + aggregated_jaccard_index (no detection).")
    lines.append("|dPQ| <= 1e-6 is the epsilon: HoVer-Net divides by TP + 1e-6, cellseg-metrics by TP + 1e-8.")
    return "\n".join(lines) + "\n"
