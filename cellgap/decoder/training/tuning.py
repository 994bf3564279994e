"""Post-processing parameters chosen on the valid split, for the model that was kept.

The reference's thresholds were tuned for its own networks and data; a decoder on frozen features
that is more or less confident moves the best cut. The network's maps are computed once, then a
coordinate search tries a few values of each parameter with the others held. A valid split of a
few dozen tiles has noise of the size of the gains, and a change chosen on that noise cost a third
of the out-of-domain PQ in the measurements (docs/recipe.md). So a change is kept only when it
holds: it must raise the metric by MIN_GAIN over all tiles and on all but one of FOLDS disjoint
parts of them (whole source images per part where there are enough of them).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellgap.decoder.inference import TileMaps
from cellgap.decoder.postprocess import PostprocessConfig
from cellgap.decoder.training.validation import headline, labelled_pairs, score_of, score_pair_list
from cellgap.featurestore.store.reader import FeatureStore

log = logging.getLogger(__name__)

MAX_TILES = 160  # about 3 MiB of maps per 256 tile: the search holds at most ~500 MiB
ROUNDS = 2
FOLDS = 4
MIN_GAIN = 0.002  # on the run's metric over all tuning tiles
MIN_FOLD_TILES = 6  # fewer tiles per part than this: the parts say nothing, only the overall gain counts


@dataclass(frozen=True)
class TuningResult:
    config: PostprocessConfig
    before: dict[str, float | None]
    after: dict[str, float | None]
    trials: list[dict[str, Any]]


def candidates(base: PostprocessConfig) -> dict[str, list[Any]]:
    """Values tried per parameter, around the magnification's defaults."""
    return {
        "foreground_threshold": [0.35, 0.45, 0.5, 0.55, 0.65],
        "threshold": [0.4, 0.5, 0.57, 0.65, 0.75],
        "distmap_weight": [0.25, 0.5, 0.75],
        "erosion_radius": sorted({max(0, base.erosion_radius - 1), base.erosion_radius, base.erosion_radius + 1}),
        "min_size": sorted({int(round(base.min_size * f)) for f in (0.5, 0.75, 1.0, 1.5)}),
    }


def tune_postprocess(tiles: list[tuple[int, TileMaps]], store: FeatureStore, base: PostprocessConfig, metric: str,
                     n_classes: int) -> TuningResult:
    """The parameters that hold for `metric` on these tiles' maps (base's values win ties and doubt)."""
    parts = fold_of_tiles([store.sources[index] for index, _ in tiles])

    def evaluate(config: PostprocessConfig) -> tuple[dict[str, float | None], list[dict[str, float | None]]]:
        pairs = list(labelled_pairs(tiles, store, config, n_classes))
        overall = headline(score_pair_list(pairs, store, n_classes))
        by_fold = [headline(score_pair_list([p for p, f in zip(pairs, parts) if f == fold], store, n_classes))
                   for fold in range(int(parts.max()) + 1)] if parts.max() > 0 else []
        return overall, by_fold

    before, before_folds = evaluate(base)
    best, best_values, best_folds = base, before, before_folds
    trials: list[dict[str, Any]] = [{"changed": None, **before}]
    for _ in range(ROUNDS):
        improved = False
        for name, values in candidates(base).items():
            for value in values:
                if getattr(best, name) == value:
                    continue
                trial = PostprocessConfig.model_validate({**best.model_dump(), name: value})
                trial_values, trial_folds = evaluate(trial)
                kept = holds(gain(trial_values, best_values, metric),
                             [gain(t, b, metric) for t, b in zip(trial_folds, best_folds)])
                trials.append({"changed": {name: value}, "kept": kept, **trial_values})
                if kept:
                    best, best_values, best_folds, improved = trial, trial_values, trial_folds, True
        if not improved:
            break
    changed = {k: v for k, v in best.model_dump().items() if v != base.model_dump()[k]}
    log.info("post-processing chosen on %d valid tiles (%d parts): %s; %s %.4f -> %.4f", len(tiles),
             len(before_folds) or 1, changed or "defaults kept", metric, score_of(before, metric),
             score_of(best_values, metric))
    return TuningResult(best, before, best_values, trials)


def holds(overall: float, by_fold: list[float]) -> bool:
    """Whether a change's gain is real: MIN_GAIN overall, and a gain on all parts but one (ties count against)."""
    if not overall >= MIN_GAIN:
        return False
    return sum(g > 0 for g in by_fold) >= len(by_fold) - 1 if len(by_fold) >= 3 else True


def gain(trial: dict[str, float | None], best: dict[str, float | None], metric: str) -> float:
    """The trial's gain on `metric`, or on PQ where the metric is undefined on either side (a part without a
    class) or does not move (a class score of 0 still leaves the segmentation to tune); 0 when neither is."""
    for name in (metric, "pq"):
        after, before = score_of(trial, name), score_of(best, name)
        if np.isfinite(after) and np.isfinite(before) and round(after - before, 4) != 0:
            return after - before
    return 0.0


def fold_of_tiles(sources: list[str]) -> np.ndarray:
    """The part (0..FOLDS-1) of each tile: whole source images dealt out where there are FOLDS of them, else
    runs of consecutive tiles (neighbouring patches of one image together); all 0 when too few tiles."""
    n = len(sources)
    if n < FOLDS * MIN_FOLD_TILES:
        return np.zeros(n, dtype=int)
    names = sorted(set(sources))
    if len(names) >= FOLDS:
        order = {name: i % FOLDS for i, name in enumerate(names)}
        parts = np.array([order[s] for s in sources])
        if np.bincount(parts, minlength=FOLDS).min() >= MIN_FOLD_TILES:
            return parts
    return np.arange(n) * FOLDS // n


def tuning_subset(indices: np.ndarray) -> np.ndarray:
    """At most MAX_TILES of the split, spread evenly over it."""
    if len(indices) <= MAX_TILES:
        return indices
    return indices[np.linspace(0, len(indices) - 1, MAX_TILES).round().astype(int)]
