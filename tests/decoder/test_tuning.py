"""Post-processing chosen on the valid split: a change is kept only when it holds over disjoint parts of it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellgap.decoder.inference import TileMaps
from cellgap.decoder.postprocess import PostprocessConfig
from cellgap.decoder.targets import TargetConfig, compute_targets, one_hot
from cellgap.decoder.training.tuning import MIN_GAIN, fold_of_tiles, holds, tune_postprocess


@dataclass
class LabelsOnly:
    """The part of a feature store that scoring reads: labels, names, tissues, sources, classes, magnification."""

    instances: np.ndarray
    classes: np.ndarray
    sources: list[str]
    class_names: tuple[str, ...] = ("a", "b", "c")
    magnification: int = 40

    @property
    def names(self) -> list[str]:
        return [f"t{i}" for i in range(len(self.instances))]

    @property
    def tissues(self) -> list[str]:
        return [""] * len(self.instances)

    def read_labels(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.instances[indices], self.classes[indices]


GRID = [(r, c) for r in range(24, 256, 42) for c in range(24, 256, 42)]  # 36 places, far enough apart


def labelled(small: list[bool], images: int, seed: int = 0) -> LabelsOnly:
    """Tiles of 12 round nuclei each, of radius 4 (about 50 px, below the 40x size filter) where `small`, else 7."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    n = len(small)
    instances = np.zeros((n, 256, 256), np.int32)
    for tile in range(n):
        for label, place in enumerate(rng.choice(len(GRID), 12, replace=False), start=1):
            instances[tile][disk(GRID[place], 4 if small[tile] else 7, shape=(256, 256))] = label
    return LabelsOnly(instances, ((instances > 0) * (1 + instances % 3)).astype(np.uint8),
                      [f"image{i * images // n}" for i in range(n)])


def maps_of(store: LabelsOnly, index: int, specks: int = 0) -> TileMaps:
    """A perfect model's maps, plus `specks` small false nuclei (radius 4) on the glass."""
    from skimage.draw import disk

    instances = store.instances[index].copy()
    free = [place for place in GRID if instances[place] == 0]
    for number, place in enumerate(free[:specks]):
        instances[disk(place, 4, shape=(256, 256))] = 1000 + number
    targets = compute_targets(instances, store.classes[index], TargetConfig(magnification=40))
    return TileMaps(one_hot(targets.sm1, 3).astype(np.float32), targets.ddm,
                    one_hot(targets.classes, 4).astype(np.float32))


def test_a_change_must_gain_overall_and_on_all_parts_but_one():
    assert holds(0.01, [0.02, 0.01, 0.003, -0.001])
    assert not holds(0.01, [0.05, -0.001, -0.002, 0.001])  # one part carries the whole gain
    assert not holds(MIN_GAIN / 2, [0.001] * 4)
    assert not holds(0.01, [0.0, 0.0, 0.01, 0.02])  # ties are no evidence
    assert holds(0.01, [])  # too few tiles for parts: the overall gain decides


def test_parts_are_whole_source_images_where_there_are_enough():
    by_image = fold_of_tiles([f"s{i // 8}" for i in range(40)])  # 5 images of 8 tiles
    assert all(len(set(by_image[i * 8:(i + 1) * 8])) == 1 for i in range(5)) and set(by_image) == {0, 1, 2, 3}
    runs = fold_of_tiles(["one"] * 24 + ["two"] * 24)  # too few images: runs of neighbouring tiles
    assert list(np.bincount(runs)) == [12, 12, 12, 12] and list(runs[:12]) == [0] * 12
    assert set(fold_of_tiles(["x"] * 10)) == {0}


def test_small_nuclei_get_a_smaller_size_filter():
    store = labelled([True] * 24, images=4)
    result = tune_postprocess([(i, maps_of(store, i)) for i in range(24)], store, PostprocessConfig(), "pq", 3)
    assert result.config.min_size < 50 <= PostprocessConfig().min_size
    assert result.before["pq"] < 0.1 and result.after["pq"] > 0.8


def test_a_gain_on_one_image_only_is_not_kept():
    """A smaller size filter finds image 0's small nuclei but lets the other images' specks through: it raises
    the overall score, yet it does not hold on three of four parts, so it is refused."""
    store = labelled([i < 6 for i in range(24)], images=4)
    tiles = [(i, maps_of(store, i, specks=0 if i < 6 else 2)) for i in range(24)]
    result = tune_postprocess(tiles, store, PostprocessConfig(), "pq", 3)
    assert result.config.min_size == PostprocessConfig().min_size
    smaller = [t for t in result.trials if t["changed"] == {"min_size": 40}]
    assert smaller and not smaller[0]["kept"] and smaller[0]["pq"] > result.before["pq"] + 0.01
