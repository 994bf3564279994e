"""Targets on hand-made instance maps whose expected SM1, distance maps and weights are worked out here."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from cellgap.decoder.kernels import flat_filter, footprint
from cellgap.decoder.targets import (
    BACKGROUND,
    BODY,
    BOUNDARY,
    TargetConfig,
    compute_targets,
    distance_maps,
    one_hot,
    regression_weight,
    sm1_map,
)


def two_squares(gap: int, size: int = 64) -> np.ndarray:
    """Square 1 at rows/cols 10..29, square 2 of the same rows starting `gap` columns after column 29."""
    labels = np.zeros((size, size), dtype=np.int32)
    labels[10:30, 10:30] = 1
    labels[10:30, 30 + gap : 50 + gap] = 2
    return labels


def expected_sm1(labels: np.ndarray, boundary_columns: list[int]) -> np.ndarray:
    sm1 = np.where(labels > 0, BODY, BACKGROUND).astype(np.uint8)
    sm1[10:30, boundary_columns] = BOUNDARY
    return sm1


# --- SM1 -------------------------------------------------------------------------------------------


def test_touching_squares_40x_band_is_two_px_on_each_side_of_the_contact() -> None:
    labels = two_squares(gap=0)
    # disk(2) is the diamond |dy| + |dx| <= 2: columns 28-29 of square 1 and 30-31 of square 2 reach
    # the other square; the 10-px-wide larger band survives the 5x5 erosion, so it adds nothing.
    sm1 = sm1_map(labels, TargetConfig(magnification=40))
    np.testing.assert_array_equal(sm1, expected_sm1(labels, [28, 29, 30, 31]))


def test_touching_squares_20x_band_is_one_px_on_each_side() -> None:
    labels = two_squares(gap=0)
    sm1 = sm1_map(labels, TargetConfig(magnification=20))
    np.testing.assert_array_equal(sm1, expected_sm1(labels, [29, 30]))


def test_isolated_square_has_no_boundary_and_its_outline_is_body() -> None:
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:25, 8:30] = 3
    for magnification in (20, 40):
        sm1 = sm1_map(labels, TargetConfig(magnification=magnification))
        np.testing.assert_array_equal(sm1, np.where(labels > 0, BODY, BACKGROUND))


def test_gap_between_near_squares_stays_background() -> None:
    labels = two_squares(gap=2)  # background columns 30 and 31
    sm1_40 = sm1_map(labels, TargetConfig(magnification=40))
    assert (sm1_40[10:30, 30:32] == BACKGROUND).all()
    # Nothing lies within the 2-px diamond of the other square, but the reference's larger band
    # (disk of radius 5) leaves 3-px strips (columns 27-29 and 32-34) that vanish under the 5x5
    # erosion, so the facing strips become boundary -- inside the cells only.
    np.testing.assert_array_equal(sm1_40, expected_sm1(labels, [27, 28, 29, 32, 33, 34]))
    # Without that step, or at 20x (the larger reach is a 5x5 square), there is no boundary at all.
    body_only = np.where(labels > 0, BODY, BACKGROUND)
    np.testing.assert_array_equal(sm1_map(labels, TargetConfig(magnification=40, near_radius=0)), body_only)
    np.testing.assert_array_equal(sm1_map(labels, TargetConfig(magnification=20)), body_only)


def test_far_squares_have_no_boundary() -> None:
    labels = two_squares(gap=7)
    np.testing.assert_array_equal(sm1_map(labels, TargetConfig()), np.where(labels > 0, BODY, BACKGROUND))


def test_squares_touching_the_tile_border_get_a_band_only_at_their_contact() -> None:
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[:, :10] = 1
    labels[:, 10:] = 2  # the tile is full: two cells, one contact, four tile borders
    sm1 = sm1_map(labels, TargetConfig(magnification=20))
    expected = np.full((20, 20), BODY, dtype=np.uint8)
    expected[:, 9:11] = BOUNDARY
    np.testing.assert_array_equal(sm1, expected)


@st.composite
def random_cells(draw: st.DrawFn) -> np.ndarray:
    labels = np.zeros((40, 40), dtype=np.int32)
    for index in range(draw(st.integers(0, 6))):
        top, left = draw(st.integers(0, 36)), draw(st.integers(0, 36))
        height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        labels[top : top + height, left : left + width] = draw(st.sampled_from([index + 1, 50 + index, 7000 + index]))
    return labels


@settings(max_examples=40, deadline=None)
@given(random_cells(), st.sampled_from([20, 40]))
def test_boundary_lies_inside_cells_and_only_near_another_cell_and_ddm_stays_in_range(labels: np.ndarray, magnification: int) -> None:
    config = TargetConfig(magnification=magnification)
    sm1 = sm1_map(labels, config)
    assert ((sm1 == BACKGROUND) == (labels == 0)).all()
    reach = footprint(config.near_shape, config.near_radius)
    for index in np.unique(labels[labels > 0]):
        others = (labels > 0) & (labels != index)
        near_others = flat_filter(others, reach, "max", False)
        if not (near_others & (labels == index)).any():
            assert not (sm1[labels == index] == BOUNDARY).any()
    ddm = distance_maps(labels)
    assert np.abs(ddm).max(initial=0) <= 1 and not ddm[:, labels == 0].any()


# --- distance maps ----------------------------------------------------------------------------------


def test_distance_maps_of_a_rectangle_ramp_across_its_bbox() -> None:
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[5:15, 20:36] = 4  # 10 rows x 16 columns
    h, v, tl, bl = distance_maps(labels)
    np.testing.assert_allclose(h[10, 20:36], np.linspace(-1, 1, 16), atol=1e-6)
    np.testing.assert_allclose(v[5:15, 27], np.linspace(-1, 1, 10), atol=1e-6)
    # tl follows row + column: -1 at the top-left corner, +1 at the bottom-right one.
    assert tl[5, 20] == -1 and tl[14, 35] == 1
    assert np.all(np.diff(tl[9, 20:36]) > 0) and np.all(np.diff(tl[5:15, 27]) > 0)
    # bl follows column - row: -1 at the bottom-left corner, +1 at the top-right one.
    assert bl[14, 20] == -1 and bl[5, 35] == 1
    assert np.all(np.diff(bl[9, 20:36]) > 0) and np.all(np.diff(bl[5:15, 27]) < 0)
    ddm = np.stack([h, v, tl, bl])
    assert ddm.dtype == np.float32
    assert (ddm[:, labels == 0] == 0).all()


def test_distance_maps_of_an_ellipse_reach_both_extremes_and_stay_in_range() -> None:
    rows, cols = np.mgrid[:50, :50]
    labels = (((rows - 24) / 11.0) ** 2 + ((cols - 20) / 17.0) ** 2 <= 1).astype(np.int32)
    ddm = distance_maps(labels)
    inside = ddm[:, labels == 1]
    assert inside.min() >= -1 and inside.max() <= 1
    np.testing.assert_allclose(inside.min(axis=1), -1, atol=1e-6)
    np.testing.assert_allclose(inside.max(axis=1), 1, atol=1e-6)
    r, c = np.nonzero(labels)
    assert ddm[2, r, c].argmin() == (r + c).argmin() and ddm[3, r, c].argmax() == (c - r).argmax()


def test_distance_maps_jump_from_plus_to_minus_one_across_a_contact() -> None:
    h = distance_maps(two_squares(gap=0))[0]
    assert h[15, 29] == 1 and h[15, 30] == -1
    assert h[15, 10] == -1 and h[15, 49] == 1


def test_thin_and_single_pixel_instances_stay_zero_like_the_reference() -> None:
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[3, 3] = 1  # single pixel
    labels[8:15, 5] = 2  # one column wide
    labels[2, 10:18] = 3  # one row wide
    labels[12:16, 12:16] = 4
    ddm = distance_maps(labels)
    assert (ddm[:, labels < 4] == 0).all()
    assert ddm[0, 12, 12] == -1 and ddm[0, 12, 15] == 1


def test_non_contiguous_ids_give_the_same_targets_as_sequential_ones() -> None:
    labels = two_squares(gap=0)
    labels[40:50, 5:15] = 3
    sparse = np.select([labels == 1, labels == 2, labels == 3], [7, 2_000_000_000, 123_456], 0).astype(np.int64)
    config = TargetConfig()
    a, b = compute_targets(labels, None, config), compute_targets(sparse, None, config)
    np.testing.assert_array_equal(a.sm1, b.sm1)
    np.testing.assert_array_equal(a.ddm, b.ddm)
    np.testing.assert_array_equal(a.weight, b.weight)


# --- weights, classes, one-hot, config -------------------------------------------------------------


def test_regression_weight_is_one_within_a_disk_of_six_px_of_cells() -> None:
    labels = np.zeros((41, 41), dtype=np.int32)
    labels[20, 20] = 1
    weight = regression_weight(labels, TargetConfig())
    rows, cols = np.mgrid[:41, :41]
    expected = np.where((rows - 20) ** 2 + (cols - 20) ** 2 <= 36, 1.0, 0.05).astype(np.float32)
    np.testing.assert_array_equal(weight, expected)
    assert weight[20, 26] == 1 and weight[20, 27] == np.float32(0.05) and weight[24, 24] == 1 and weight[25, 24] < 1


def test_empty_tile() -> None:
    targets = compute_targets(np.zeros((32, 48), dtype=np.int32), None, TargetConfig())
    assert (targets.sm1 == BACKGROUND).all() and targets.sm1.dtype == np.uint8
    assert targets.ddm.shape == (4, 32, 48) and not targets.ddm.any()
    assert not targets.classes.any()
    assert (targets.weight == np.float32(0.05)).all()


def test_classes_default_to_one_and_are_cleared_outside_cells() -> None:
    labels = two_squares(gap=3)
    assert set(np.unique(compute_targets(labels, None, TargetConfig()).classes)) == {0, 1}
    classes = np.full(labels.shape, 4, dtype=np.uint8)
    classes[labels == 2] = 2
    targets = compute_targets(labels, classes, TargetConfig())
    assert (targets.classes[labels == 0] == 0).all()
    assert (targets.classes[labels == 1] == 4).all() and (targets.classes[labels == 2] == 2).all()


def test_one_hot() -> None:
    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    encoded = one_hot(labels, 3)
    assert encoded.shape == (3, 2, 2) and encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded.argmax(axis=0), labels)
    np.testing.assert_array_equal(encoded.sum(axis=0), 1)
    with pytest.raises(ValueError):
        one_hot(labels, 2)


def test_config_takes_sizes_from_magnification_unless_given() -> None:
    at40, at20 = TargetConfig(), TargetConfig.for_magnification(20)
    assert (at40.boundary_shape, at40.boundary_radius, at40.max_hole) == ("disk", 2, 8)
    assert (at20.boundary_shape, at20.boundary_radius, at20.near_shape, at20.near_radius) == ("square", 1, "square", 2)
    custom = TargetConfig(magnification=20, boundary_radius=2)
    assert custom.boundary_radius == 2 and custom.boundary_shape == "square" and custom.max_hole == 3
    with pytest.raises(pydantic.ValidationError):
        TargetConfig(magnification=10)
    with pytest.raises(pydantic.ValidationError):
        TargetConfig(bogus=1)
    with pytest.raises(pydantic.ValidationError):
        at40.boundary_radius = 3  # type: ignore[misc]


def test_bad_instance_maps_are_refused() -> None:
    with pytest.raises(ValueError):
        compute_targets(np.zeros((4, 4, 1), dtype=np.int32), None, TargetConfig())
    with pytest.raises(ValueError):
        compute_targets(np.zeros((4, 4), dtype=np.float32), None, TargetConfig())
    with pytest.raises(ValueError):
        compute_targets(-np.ones((4, 4), dtype=np.int32), None, TargetConfig())
    with pytest.raises(ValueError):
        compute_targets(np.zeros((4, 4), dtype=np.int32), np.zeros((4, 5), dtype=np.uint8), TargetConfig())


@pytest.mark.parametrize("shape", ["disk", "square"])
@pytest.mark.parametrize("radius", [0, 1, 2, 5, 6])
def test_flat_filter_equals_scipy(shape: str, radius: int) -> None:
    rng = np.random.default_rng(radius)
    image = rng.integers(0, 9, (23, 31)).astype(np.uint16)
    se = footprint(shape, radius)  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        flat_filter(image, se, "max", 0), ndi.maximum_filter(image, footprint=se, mode="constant", cval=0)
    )
    np.testing.assert_array_equal(
        flat_filter(image, se, "min", 7), ndi.minimum_filter(image, footprint=se, mode="constant", cval=7)
    )
