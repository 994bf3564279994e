"""Post-processing recovers known instances and classes from ideal maps built by `compute_targets`."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest
from scipy import ndimage as ndi

from cellgap.decoder.kernels import DIRECTIONS, directional_kernels
from cellgap.decoder.postprocess import (
    Instances,
    PostprocessConfig,
    contour_map,
    mean_per_instance,
    pool_classes,
    postprocess,
)
from cellgap.decoder.targets import TargetConfig, compute_targets, one_hot

N_CLASSES = 5


def synthetic_nuclei(
    n: int = 40, size: int = 256, seed: int = 0, radii: tuple[float, float] = (6, 11), max_overlap: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` random ellipses that may touch (an overlap goes to the earlier cell) and their types."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), dtype=np.int32)
    classes = np.zeros((size, size), dtype=np.uint8)
    rows, cols = np.mgrid[:size, :size]
    count = 0
    for _ in range(50 * n):
        if count == n:
            break
        centre_row, centre_col = rng.uniform(0, size, 2)
        a, b = rng.uniform(*radii, 2)
        angle = rng.uniform(0, np.pi)
        dr, dc = rows - centre_row, cols - centre_col
        u = (dc * np.cos(angle) + dr * np.sin(angle)) / a
        v = (-dc * np.sin(angle) + dr * np.cos(angle)) / b
        ellipse = u * u + v * v <= 1
        if (ellipse & (labels > 0)).sum() > max_overlap * ellipse.sum():
            continue
        count += 1
        new = ellipse & (labels == 0)
        labels[new] = count
        classes[new] = rng.integers(1, N_CLASSES + 1)
    return labels, classes


def ideal_maps(labels: np.ndarray, classes: np.ndarray | None, magnification: int) -> tuple:
    targets = compute_targets(labels, classes, TargetConfig(magnification=magnification))
    class_prob = None if classes is None else one_hot(targets.classes, N_CLASSES + 1)
    return one_hot(targets.sm1, 3), targets.ddm, class_prob


def best_iou(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """For each true instance, its IoU with the predicted instance that overlaps it most."""
    ious = []
    for index in np.unique(truth[truth > 0]):
        cell = truth == index
        ids, counts = np.unique(predicted[cell], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if ids.size == 0:
            ious.append(0.0)
            continue
        best = ids[counts.argmax()]
        ious.append(counts.max() / np.count_nonzero(cell | (predicted == best)))
    return np.array(ious)


def majority(values: np.ndarray) -> int:
    return int(np.bincount(values).argmax())


@pytest.mark.parametrize(
    ("preset", "magnification", "radii"), [("pannuke", 40, (6.0, 11.0)), ("conic", 20, (3.5, 6.5))]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_ideal_maps_give_back_every_instance_and_its_class(
    preset: str, magnification: int, radii: tuple[float, float], seed: int
) -> None:
    labels, classes = synthetic_nuclei(seed=seed, radii=radii, max_overlap=0.25)
    touching = (labels[:, :-1] > 0) & (labels[:, 1:] > 0) & (labels[:, :-1] != labels[:, 1:])
    assert touching.any()  # the layout does hold touching cells
    result = postprocess(*ideal_maps(labels, classes, magnification), PostprocessConfig.preset(preset))

    ious = best_iou(labels, result.labels)
    assert len(result) == labels.max()
    assert ious.min() > 0.9  # every match has IoU > 0.5 and nothing is left over: PQ = mean IoU > 0.9
    for index in range(1, labels.max() + 1):
        cell = labels == index
        assert result.classes[majority(result.labels[cell]) - 1] == majority(classes[cell])
    np.testing.assert_array_equal(np.unique(result.labels), np.arange(len(result) + 1))
    assert result.labels.dtype == np.int32 and result.classes.dtype == np.int32
    assert result.confidences.min() > 0.9  # one-hot SM2: only pixels at the edges disagree
    assert result.scores.min() > 0.9  # and the foreground is certain inside every cell


@pytest.mark.parametrize("magnification", [20, 40])
def test_two_touching_cells_are_split(magnification: int) -> None:
    rows, cols = np.mgrid[:64, :64]
    radius = 10 if magnification == 40 else 6
    left = (rows - 32) ** 2 + (cols - 32 + radius) ** 2 <= radius**2
    right = (rows - 32) ** 2 + (cols - 32 - radius) ** 2 <= radius**2
    labels = np.where(left, 1, np.where(right, 2, 0)).astype(np.int32)
    assert ((labels[:, :-1] == 1) & (labels[:, 1:] == 2)).any()
    config = PostprocessConfig.preset(magnification=magnification, min_size=20)
    result = postprocess(*ideal_maps(labels, None, magnification), config)
    assert len(result) == 2
    assert best_iou(labels, result.labels).min() > 0.9
    np.testing.assert_array_equal(result.classes, [1, 1])  # no class head: one generic type


def test_small_cells_keep_a_marker_and_tiny_ones_are_removed() -> None:
    labels = np.zeros((48, 48), dtype=np.int32)
    rows, cols = np.mgrid[:48, :48]
    labels[(rows - 10) ** 2 + (cols - 10) ** 2 <= 5] = 1  # 21 px: its eroded core is 1 px
    labels[(rows - 30) ** 2 + (cols - 30) ** 2 <= 36] = 2  # 113 px
    labels[40:42, 5:8] = 3  # 6 px: below min_size
    config = PostprocessConfig.preset(magnification=20, min_size=15)
    maps = ideal_maps(labels, None, 20)
    result = postprocess(*maps, config)
    assert len(result) == 2
    assert best_iou(labels, result.labels)[:2].min() > 0.9
    assert not result.labels[labels == 3].any()
    # The reference drops a marker under min_residue px, and with it the small cell.
    reference = postprocess(*maps, config.model_copy(update={"keep_small_cores": False}))
    assert len(reference) == 1 and not reference.labels[labels == 1].any()


def test_cells_touching_the_tile_border_are_kept() -> None:
    labels = np.zeros((64, 64), dtype=np.int32)
    labels[:20, :20] = 1
    labels[:20, 20:40] = 2
    labels[50:, 30:] = 3
    result = postprocess(*ideal_maps(labels, None, 40), PostprocessConfig.preset("pannuke"))
    assert len(result) == 3 and best_iou(labels, result.labels).min() > 0.9


def test_empty_maps_give_no_instances() -> None:
    sm1 = np.zeros((3, 32, 32), dtype=np.float32)
    sm1[2] = 1.0
    class_prob = np.zeros((N_CLASSES + 1, 32, 32), dtype=np.float32)
    class_prob[0] = 1.0
    result = postprocess(sm1, np.zeros((4, 32, 32), dtype=np.float32), class_prob, PostprocessConfig())
    assert len(result) == 0 and not result.labels.any() and result.labels.shape == (32, 32)
    assert result.scores.shape == result.confidences.shape == (0,) and not result.class_map().any()


def test_class_pooling_sums_probabilities_and_falls_back_to_the_best_real_class() -> None:
    labels = np.zeros((4, 6), dtype=np.int32)
    labels[:, :3] = 1
    labels[:, 3:] = 2
    probs = np.zeros((4, 4, 6), dtype=np.float32)  # background + 3 types
    probs[:, :, :3] = np.array([0.6, 0.1, 0.3, 0.0])[:, None, None]  # background wins: best real type is 2
    probs[:, :2, 3:] = np.array([0.1, 0.0, 0.0, 0.9])[:, None, None]  # type 3 on 6 px ...
    probs[:, 2:, 3:] = np.array([0.0, 0.8, 0.2, 0.0])[:, None, None]  # ... beats type 1 on 6 px (sum 5.4 > 4.8)
    classes, confidences = pool_classes(labels, probs)
    np.testing.assert_array_equal(classes, [2, 3])
    # among real classes only: 0.3 of 0.4 for the first cell, 5.4 of 0.8*6+0.2*6+0.9*6 = 11.4 for the second
    np.testing.assert_allclose(confidences, [0.75, 5.4 / 11.4], atol=1e-6)


def test_without_a_class_head_every_instance_is_type_one_and_the_score_is_the_foreground() -> None:
    labels = np.array([[1, 1, 0, 2]], dtype=np.int32)
    classes, confidences = pool_classes(labels, None)
    np.testing.assert_array_equal(classes, [1, 1])
    np.testing.assert_array_equal(confidences, [1.0, 1.0])
    scores = mean_per_instance(labels, np.array([[0.8, 0.6, 0.1, 0.9]], dtype=np.float32))
    np.testing.assert_allclose(scores, [0.7, 0.9], atol=1e-6)


def test_min_score_drops_the_cells_the_model_does_not_believe_and_renumbers_the_rest() -> None:
    labels = np.array([[1, 1, 0, 2, 3]], dtype=np.int32)
    instances = Instances(labels=labels, classes=np.array([1, 2, 3], np.int32),
                          scores=np.array([0.9, 0.2, 0.6], np.float32), confidences=np.array([0.5, 0.6, 0.7], np.float32))
    kept = instances.with_min_score(0.5)
    np.testing.assert_array_equal(kept.labels, [[1, 1, 0, 0, 2]])
    np.testing.assert_array_equal(kept.classes, [1, 3])
    np.testing.assert_allclose(kept.confidences, [0.5, 0.7])
    assert instances.with_min_score(0.0) is instances and len(instances.with_min_score(0.95)) == 0


def test_class_map_paints_each_instance_with_its_type() -> None:
    labels = np.array([[0, 1, 2], [2, 2, 0]], dtype=np.int32)
    instances = Instances(labels=labels, classes=np.array([4, 2], dtype=np.int32),
                          scores=np.ones(2, dtype=np.float32), confidences=np.ones(2, dtype=np.float32))
    np.testing.assert_array_equal(instances.class_map(), [[0, 4, 2], [2, 2, 0]])
    assert instances.class_map().dtype == np.uint8


def test_contours_light_up_where_touching_cells_meet() -> None:
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[10:30, 10:30] = 1
    labels[10:30, 30:50] = 2
    targets = compute_targets(labels, None, TargetConfig())
    contours = contour_map(targets.ddm, labels > 0)
    assert contours[20, 29:31].min() >= 0.57 > contours[20, 15:25].max()
    assert not contours[labels == 0].any()


def test_presets_and_magnification_defaults() -> None:
    pannuke, conic = PostprocessConfig.preset("pannuke"), PostprocessConfig.preset("conic")
    assert (pannuke.magnification, pannuke.min_size, pannuke.erosion_radius, pannuke.struct_radius) == (40, 50, 2, 5)
    assert (conic.magnification, conic.min_size, conic.erosion_radius, conic.mask_se) == (20, 26, 1, "disk")
    assert PostprocessConfig.preset("cytodark0-20x").min_size == 20
    assert PostprocessConfig.preset("cytodark0-40x").min_size == 80
    assert PostprocessConfig.preset(magnification=20).min_size == 24
    assert PostprocessConfig().min_size == 80 and PostprocessConfig().threshold == 0.57
    assert PostprocessConfig.preset("conic", min_size=30).min_size == 30
    with pytest.raises(ValueError):
        PostprocessConfig.preset("lizard")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        pannuke.min_size = 3  # type: ignore[misc]


def test_maps_of_the_wrong_shape_are_refused() -> None:
    sm1, ddm = np.zeros((3, 8, 8), np.float32), np.zeros((4, 8, 8), np.float32)
    with pytest.raises(ValueError):
        postprocess(sm1[:2], ddm, None, PostprocessConfig())
    with pytest.raises(ValueError):
        postprocess(sm1, ddm[:, :4], None, PostprocessConfig())
    with pytest.raises(ValueError):
        postprocess(sm1, ddm, np.zeros((1, 8, 8), np.float32), PostprocessConfig())


def test_directional_kernels_follow_their_formulas_and_directions() -> None:
    kernels = directional_kernels(5)
    assert kernels.shape == (4, 5, 5) and kernels.dtype == np.float32 and len(DIRECTIONS) == 4
    k_h, k_v, k_tl, k_bl = kernels
    assert k_h[2, 4] == pytest.approx(0.5) and k_h[0, 4] == pytest.approx(2 / 8) and k_h[2, 3] == pytest.approx(1)
    np.testing.assert_allclose(k_v, k_h.T)
    np.testing.assert_allclose(k_tl, k_h + k_v)
    np.testing.assert_allclose(k_bl, np.rot90(k_tl))
    assert (kernels[:, 2, 2] == 0).all()
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 0, atol=1e-6)
    rows, cols = np.mgrid[:11, :11].astype(np.float32)
    ramps = [cols, rows, rows + cols, cols - rows]  # each grows along its kernel's direction
    for kernel, ramp in zip(kernels, ramps):
        assert ndi.correlate(ramp, kernel)[5, 5] > 0
