"""Post-processing parameters chosen on the valid split, for the model that was kept.

The reference's thresholds were tuned for its own networks and data; a decoder on frozen features
that is more or less confident moves the best cut. The network's maps are computed once, then a
coordinate search tries a few values of each parameter with the others held, keeping a change only
when it raises the run's metric. Coarse steps and a bounded tile count keep it to seconds and
keep it from fitting the noise of a small split.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellgap.decoder.inference import TileMaps
from cellgap.decoder.postprocess import PostprocessConfig
from cellgap.decoder.training.validation import headline, score_maps, score_of
from cellgap.featurestore.store.reader import FeatureStore

log = logging.getLogger(__name__)

MAX_TILES = 160  # about 3 MiB of maps per 256 tile: the search holds at most ~500 MiB
ROUNDS = 2


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
    """The best parameters found for `metric` on these tiles' maps (base's values win ties)."""
    def evaluate(config: PostprocessConfig) -> dict[str, float | None]:
        return headline(score_maps(tiles, store, config, n_classes))

    before = evaluate(base)
    best, best_values = base, before
    trials: list[dict[str, Any]] = [{"changed": None, **before}]
    for _ in range(ROUNDS):
        improved = False
        for name, values in candidates(base).items():
            for value in values:
                if getattr(best, name) == value:
                    continue
                trial = PostprocessConfig.model_validate({**best.model_dump(), name: value})
                trial_values = evaluate(trial)
                trials.append({"changed": {name: value}, **trial_values})
                if _key(trial_values, metric) > _key(best_values, metric):
                    best, best_values, improved = trial, trial_values, True
        if not improved:
            break
    changed = {k: v for k, v in best.model_dump().items() if v != base.model_dump()[k]}
    log.info("post-processing chosen on %d valid tiles: %s; %s %.4f -> %.4f", len(tiles), changed or "defaults kept",
             metric, score_of(before, metric), score_of(best_values, metric))
    return TuningResult(best, before, best_values, trials)


def _key(values: dict[str, float | None], metric: str) -> tuple[float, float]:
    """The metric to 1e-4 (smaller steps are noise), then PQ: a class score of 0 still leaves the segmentation to tune."""
    return round(score_of(values, metric), 4), round(score_of(values, "pq"), 4)


def tuning_subset(indices: np.ndarray) -> np.ndarray:
    """At most MAX_TILES of the split, spread evenly over it."""
    if len(indices) <= MAX_TILES:
        return indices
    return indices[np.linspace(0, len(indices) - 1, MAX_TILES).round().astype(int)]
