"""Validation: predict a split of the store, post-process, and score with the shared metrics code."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from cellgap.decoder.inference import TileMaps, forward_probabilities, instances_of, split_tiles
from cellgap.decoder.loader import StoreBatches
from cellgap.decoder.networks import CellDecoder
from cellgap.decoder.postprocess import PostprocessConfig
from cellgap.featurestore.datasets.base import LabelledImage
from cellgap.featurestore.store.reader import FeatureStore
from cellgap.metrics import MetricsReport
from cellgap.metrics.detection import radius_at
from cellgap.metrics.evaluate import score_pairs


def predicted_maps(model: CellDecoder, batches: StoreBatches) -> Iterator[tuple[int, TileMaps]]:
    """(store index, maps) for every tile of the batches, in evaluation mode."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches.epoch(0):
            maps = split_tiles(forward_probabilities(model, batch.features, batch.image))
            yield from zip((int(i) for i in batch.indices), maps)
    finally:
        model.train(was_training)


def score_maps(tiles: Iterable[tuple[int, TileMaps]], store: FeatureStore, postprocess: PostprocessConfig,
               n_classes: int) -> MetricsReport:
    """Post-process each tile's maps exactly as prediction does and score them against the store's labels."""
    return score_pair_list(labelled_pairs(tiles, store, postprocess, n_classes), store, n_classes)


def labelled_pairs(tiles: Iterable[tuple[int, TileMaps]], store: FeatureStore, postprocess: PostprocessConfig,
                   n_classes: int) -> Iterator[tuple[LabelledImage, LabelledImage]]:
    """(truth, prediction) per tile, the prediction post-processed exactly as `predict` does."""
    typed = n_classes > 0
    for index, maps in tiles:
        truth, truth_classes = (part[0] for part in store.read_labels(np.array([index])))
        found = instances_of(maps, postprocess)
        name, tissue = store.names[index], store.tissues[index]
        yield (LabelledImage(name, truth, truth_classes if typed else None, tissue),
               LabelledImage(name, found.labels, found.class_map() if typed else None, tissue))


def score_pair_list(pairs: Iterable[tuple[LabelledImage, LabelledImage]], store: FeatureStore,
                    n_classes: int) -> MetricsReport:
    """The metrics of (truth, prediction) pairs of a store's tiles, at the store's magnification."""
    return score_pairs(pairs, class_names=store.class_names, n_classes=n_classes or None,
                       radius=radius_at(store.magnification))


def evaluate_split(model: CellDecoder, batches: StoreBatches, store: FeatureStore,
                   postprocess: PostprocessConfig) -> MetricsReport:
    """Metrics of the model on the batches' tiles."""
    return score_maps(predicted_maps(model, batches), store, postprocess, model.spec.n_classes)


def headline(report: MetricsReport) -> dict[str, float | None]:
    """The numbers logged each validation: PQ, mPQ+, F1_d (plus AJI and Dice)."""
    data = report.to_json_dict()
    return {
        "pq": data["instance"]["pq"], "aji": data["instance"]["aji"], "dice1": data["instance"]["dice1"],
        "mpq_plus": data["conic"]["mpq_plus"], "f1_d": data["detection"]["f1_d"],
    }


def score_of(values: dict[str, float | None], metric: str) -> float:
    value = values.get(metric)
    return float("-inf") if value is None or np.isnan(value) else float(value)
