"""The synthetic H&E generator: determinism, exact and clean labels, density, and a tissue-like look."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from cellgap.featurestore.datasets.synthetic import CLASS_NAMES, SyntheticTile, make_image, make_tile

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def tiles() -> list[SyntheticTile]:
    """Default-density tiles, including every class."""
    return [make_tile(seed, n_classes=3) for seed in range(4)] + [make_tile(seed, n_classes=6) for seed in range(4, 10)]


@pytest.fixture(scope="module")
def crowded() -> SyntheticTile:
    return make_tile(11, n_nuclei=300)


def instance_stats(tile_list: list[SyntheticTile]) -> dict[int, dict[str, float]]:
    """Mean area, RGB and elongation of the nuclei of each class over `tile_list`."""
    per_class: dict[int, list[tuple[float, np.ndarray, float]]] = {}
    for tile in tile_list:
        for region in regionprops(tile.instances):
            rows, cols = region.coords[:, 0], region.coords[:, 1]
            elongation = region.axis_major_length / max(region.axis_minor_length, 1.0)
            per_class.setdefault(int(tile.classes[rows[0], cols[0]]), []).append(
                (region.area, tile.image[rows, cols].mean(axis=0), elongation))
    return {c: {"area": float(np.mean([a for a, _, _ in v])),
                "rgb": np.mean([rgb for _, rgb, _ in v], axis=0),
                "elongation": float(np.mean([e for _, _, e in v]))} for c, v in per_class.items()}


def test_same_arguments_give_identical_output() -> None:
    first, second = make_tile(5, n_nuclei=40, n_classes=4), make_tile(5, n_nuclei=40, n_classes=4)
    for name in ("image", "instances", "classes"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    big_a, big_b = make_image(3, 300, 340), make_image(3, 300, 340)
    np.testing.assert_array_equal(big_a.image, big_b.image)
    np.testing.assert_array_equal(big_a.instances, big_b.instances)


def test_different_seeds_differ() -> None:
    assert not np.array_equal(make_tile(1).image, make_tile(2).image)


def test_tile_is_the_square_image_of_the_same_seed() -> None:
    tile, image = make_tile(8, size=128, n_classes=2), make_image(8, 128, 128, n_classes=2)
    np.testing.assert_array_equal(tile.image, image.image)
    np.testing.assert_array_equal(tile.instances, image.instances)


@pytest.mark.parametrize(("height", "width"), [(256, 256), (64, 64), (300, 340)])
def test_shapes_and_dtypes(height: int, width: int) -> None:
    tile = make_tile(0, size=height) if height == width else make_image(0, height, width)
    assert tile.image.shape == (height, width, 3) and tile.image.dtype == np.uint8
    assert tile.instances.shape == (height, width) and tile.instances.dtype == np.int32
    assert tile.classes.shape == (height, width) and tile.classes.dtype == np.uint8


def test_labels_are_a_clean_partition(tiles: list[SyntheticTile], crowded: SyntheticTile) -> None:
    for tile in [*tiles, crowded]:
        n = int(tile.instances.max())
        assert n > 0
        np.testing.assert_array_equal(np.unique(tile.instances), np.arange(n + 1))  # ids 1..n contiguous
        np.testing.assert_array_equal(tile.classes == 0, tile.instances == 0)  # classes 0 exactly on background
        for index, box in enumerate(ndimage.find_objects(tile.instances), start=1):
            own = tile.instances[box] == index
            assert ndimage.label(own, structure=FOUR_CONNECTED)[1] == 1, f"instance {index} is in pieces"
            assert own.sum() >= 15
            assert np.unique(tile.classes[box][own]).size == 1, f"instance {index} has several classes"


def test_class_ids_stay_within_n_classes(tiles: list[SyntheticTile]) -> None:
    assert {int(c) for c in np.unique(tiles[0].classes)} <= {0, 1, 2, 3}
    seen = set().union(*({int(c) for c in np.unique(tile.classes)} for tile in tiles))
    assert seen == set(range(len(CLASS_NAMES) + 1))


def test_some_nuclei_touch(tiles: list[SyntheticTile]) -> None:
    for tile in tiles[:4]:
        inst = tile.instances
        touching = 0
        for a, b in ((inst[1:], inst[:-1]), (inst[:, 1:], inst[:, :-1])):
            touching += int(((a != b) & (a > 0) & (b > 0)).sum())
        assert touching > 0


@pytest.mark.parametrize("n_nuclei", [3, 40, 300])
def test_asked_number_of_nuclei_is_roughly_met(n_nuclei: int) -> None:
    for seed in range(2):
        count = int(make_tile(seed, n_nuclei=n_nuclei).instances.max())
        assert n_nuclei * 0.85 - 1 <= count <= n_nuclei


def test_default_density_is_typical(tiles: list[SyntheticTile]) -> None:
    counts = [int(tile.instances.max()) for tile in tiles]
    assert all(18 <= count <= 50 for count in counts), counts
    large = make_image(2, 512, 384)
    assert 18 <= large.instances.max() * 65536 / (512 * 384) <= 50


def test_no_nuclei_gives_bare_stroma() -> None:
    tile = make_tile(0, size=64, n_nuclei=0)
    assert tile.instances.max() == 0 and tile.classes.max() == 0 and tile.image.std() > 3


def test_classes_differ_in_size_and_colour(tiles: list[SyntheticTile]) -> None:
    stats = instance_stats(tiles[:4])
    for a, b in itertools.combinations(sorted(stats), 2):
        ratio = max(stats[a]["area"], stats[b]["area"]) / min(stats[a]["area"], stats[b]["area"])
        assert ratio > 1.3, (a, b, stats[a]["area"], stats[b]["area"])
        assert np.linalg.norm(stats[a]["rgb"] - stats[b]["rgb"]) > 15, (a, b)


def test_all_six_classes_are_distinguishable(tiles: list[SyntheticTile]) -> None:
    stats = instance_stats(tiles[4:])
    assert sorted(stats) == list(range(1, 7))
    for a, b in itertools.combinations(stats, 2):
        sa, sb = stats[a], stats[b]
        size = max(sa["area"], sb["area"]) / min(sa["area"], sb["area"]) > 1.25
        colour = np.linalg.norm(sa["rgb"] - sb["rgb"]) > 15
        shape = max(sa["elongation"], sb["elongation"]) / min(sa["elongation"], sb["elongation"]) > 1.5
        assert size or colour or shape, (CLASS_NAMES[a - 1], CLASS_NAMES[b - 1])


def test_looks_like_haematoxylin_and_eosin(tiles: list[SyntheticTile]) -> None:
    for tile in tiles:
        nucleus = tile.instances > 0
        stroma = tile.image[~nucleus].astype(float)
        nuclei = tile.image[nucleus].astype(float)
        assert nuclei.mean() < stroma.mean() - 30  # nuclei darker than stroma
        red, green, blue = stroma.mean(axis=0)
        assert red > green and blue > green  # pink stroma
        assert nuclei[:, 2].mean() > nuclei[:, 1].mean() + 20  # purple-blue nuclei
        assert stroma.mean(axis=1).std() > 8  # textured, not flat
    assert tiles[0].image.min() < 100 and tiles[0].image.max() > 230


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        make_tile(0, n_classes=0)
    with pytest.raises(ValueError):
        make_tile(0, n_classes=len(CLASS_NAMES) + 1)
    with pytest.raises(ValueError):
        make_tile(0, n_nuclei=-1)
    with pytest.raises(ValueError):
        make_image(0, 8, 100)
