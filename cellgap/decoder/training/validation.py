"""Validation: predict a split of the store, post-process, and score with the shared metrics code."""
from __future__ import annotations

import numpy as np

from cellgap.decoder.inference import forward_probabilities, instances_of, split_tiles
from cellgap.decoder.loader import StoreBatches
from cellgap.decoder.networks import CellDecoder
from cellgap.decoder.postprocess import PostprocessConfig
from cellgap.featurestore.store.reader import FeatureStore
from cellgap.metrics import EvaluationAccumulator, MetricsReport
from cellgap.metrics.detection import radius_at


def evaluate_split(model: CellDecoder, batches: StoreBatches, store: FeatureStore,
                   postprocess: PostprocessConfig) -> MetricsReport:
    """Metrics of the model on the batches' tiles (post-processed exactly as at prediction time)."""
    n_classes = model.spec.n_classes
    accumulator = EvaluationAccumulator(n_classes=n_classes or None, class_names=store.class_names,
                                        radius=radius_at(store.magnification))
    was_training = model.training
    model.eval()
    for batch in batches.epoch(0):
        maps = split_tiles(forward_probabilities(model, batch.features, batch.image))
        gt_instances, gt_classes = store.read_labels(batch.indices)
        for tile_maps, index, truth, truth_classes in zip(maps, batch.indices, gt_instances, gt_classes):
            found = instances_of(tile_maps, postprocess)
            typed = n_classes > 0
            accumulator.add(truth, found.labels, truth_classes if typed else None,
                            found.class_map() if typed else None, tissue=store.tissues[int(index)],
                            name=store.names[int(index)])
    model.train(was_training)
    return accumulator.reduce()


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
