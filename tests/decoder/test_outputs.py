"""Cell tables, GeoJSON, overlays and prediction folders from hand-made and synthetic label maps."""
from __future__ import annotations

import csv
import json
import time
import uuid

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image
from scipy import ndimage as ndi

from cellgap.decoder.outputs import (
    CSV_COLUMNS,
    PALETTE,
    OutputNameError,
    cells_of,
    class_color,
    class_counts,
    legend_image,
    overlay,
    shapes,
    to_geojson,
    write_class_names,
    write_prediction,
)
from cellgap.decoder.postprocess import Instances
from cellgap.featurestore.datasets import open_label_source
from cellgap.featurestore.datasets.synthetic import CLASS_NAMES, make_tile

NAMES = ("tumour", "lymphocyte", "stromal")


def instances_of(labels: np.ndarray, classes=None, score: float = 0.75, confidence: float = 0.5) -> Instances:
    labels = np.asarray(labels, dtype=np.int32)
    n = int(labels.max()) if labels.size else 0
    classes = np.ones(n, np.int32) if classes is None else np.asarray(classes, np.int32)
    return Instances(labels=labels, classes=classes, scores=np.full(n, score, np.float32),
                     confidences=np.full(n, confidence, np.float32))


def tile_instances(seed: int, n_classes: int = 3):
    tile = make_tile(seed, n_classes=n_classes)
    n = int(tile.instances.max())
    objects = ndi.find_objects(tile.instances)
    classes = [int(tile.classes[box][tile.instances[box] == i + 1][0]) for i, box in enumerate(objects)]
    return tile, instances_of(tile.instances, classes[:n])


def outline(mask, origin=(0, 0)):
    """The outer ring of the largest piece, holes filled (what `Cell.polygon` is)."""
    return shapes(mask, origin)[0][0] if np.asarray(mask).any() else []


def polygon_area(polygon) -> float:
    """Signed shoelace area of a closed ring (positive for exterior rings, negative for holes)."""
    ring = np.asarray(polygon, dtype=float).reshape(-1, 2)
    if len(ring) < 4:
        return 0.0
    x, y = ring[:-1, 0], ring[:-1, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def rasterise(polygon, shape) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (exact for pixel-edge polygons)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    return MplPath(np.asarray(polygon)).contains_points(centres).reshape(shape)


# --- cells ------------------------------------------------------------------------------------


def test_rectangle_has_exact_bbox_area_centroid_and_polygon():
    labels = np.zeros((10, 12), np.int32)
    labels[2:5, 3:8] = 1  # rows 2..4, columns 3..7
    (cell,) = cells_of(instances_of(labels, [2]), NAMES)
    assert (cell.id, cell.class_id, cell.class_name) == (1, 2, "lymphocyte")
    assert (cell.score, cell.class_confidence) == (pytest.approx(0.75), pytest.approx(0.5))
    assert cell.bbox == (3, 2, 8, 5)
    assert cell.area == 15
    assert cell.centroid == (5.0, 3.0)
    assert cell.polygon == [[3, 2], [8, 2], [8, 5], [3, 5], [3, 2]]
    assert polygon_area(cell.polygon) == 15


def test_one_pixel_cell_is_the_unit_square():
    labels = np.zeros((4, 4), np.int32)
    labels[1, 2] = 1
    (cell,) = cells_of(instances_of(labels), ())
    assert cell.class_name == "cell"
    assert cell.bbox == (2, 1, 3, 2) and cell.area == 1 and cell.centroid == (2.0, 1.0)
    assert cell.polygon == [[2, 1], [3, 1], [3, 2], [2, 2], [2, 1]]


def test_touching_cells_share_an_edge_and_do_not_overlap():
    labels = np.zeros((8, 8), np.int32)
    labels[1:5, 1:4] = 1
    labels[2:6, 4:7] = 2  # shares the edge x = 4, y 2..5 with cell 1
    first, second = cells_of(instances_of(labels), ())
    assert first.polygon == [[1, 1], [4, 1], [4, 5], [1, 5], [1, 1]]
    assert second.polygon == [[4, 2], [7, 2], [7, 6], [4, 6], [4, 2]]
    assert not (rasterise(first.polygon, labels.shape) & rasterise(second.polygon, labels.shape)).any()


def test_cell_on_the_image_border_reaches_the_image_edge():
    labels = np.zeros((6, 9), np.int32)
    labels[3:, 6:] = 1
    (cell,) = cells_of(instances_of(labels), ())
    assert cell.bbox == (6, 3, 9, 6)
    assert cell.polygon == [[6, 3], [9, 3], [9, 6], [6, 6], [6, 3]]


def test_staircase_keeps_only_corners():
    mask = np.array([[1, 0, 0],
                     [1, 1, 0],
                     [1, 1, 1]], bool)
    assert outline(mask) == [[0, 0], [1, 0], [1, 1], [2, 1], [2, 2], [3, 2], [3, 3], [0, 3], [0, 0]]


def test_hole_is_filled_and_only_the_largest_piece_is_outlined():
    labels = np.zeros((9, 9), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole
    labels[7, 7] = 1  # a stray pixel touching the body only far away
    (cell,) = cells_of(instances_of(labels), ())
    assert cell.area == 25  # every pixel of the instance
    assert cell.bbox == (1, 1, 8, 8)
    assert cell.polygon == [[1, 1], [6, 1], [6, 6], [1, 6], [1, 1]]


def test_geojson_keeps_holes_as_interior_rings_and_pieces_as_a_multipolygon():
    labels = np.zeros((9, 9), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole
    labels[7, 7] = 1  # a second piece
    (feature,) = to_geojson(cells_of(instances_of(labels), ()))["features"]
    assert feature["geometry"]["type"] == "MultiPolygon"
    body, stray = feature["geometry"]["coordinates"]
    assert body == [[[1, 1], [6, 1], [6, 6], [1, 6], [1, 1]], [[3, 3], [3, 4], [4, 4], [4, 3], [3, 3]]]
    assert [polygon_area(ring) for ring in body] == [25.0, -1.0]  # RFC 7946: holes clockwise
    assert stray == [[[7, 7], [8, 7], [8, 8], [7, 8], [7, 7]]]
    labels[7, 7] = 0
    (feature,) = to_geojson(cells_of(instances_of(labels), ()))["features"]
    assert feature["geometry"]["type"] == "Polygon" and len(feature["geometry"]["coordinates"]) == 2


@pytest.mark.parametrize("seed", range(6))
def test_shapes_of_random_blobs_rasterise_back_to_the_mask(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((24, 20)) < 0.55) & ndi.binary_closing(rng.random((24, 20)) < 0.7)  # pieces, holes, islands
    polygons = shapes(mask, origin=(5, 7))
    assert sum(polygon_area(ring) for rings in polygons for ring in rings) == mask.sum()
    drawn = np.zeros(mask.shape, bool)
    for exterior, *holes in polygons:
        assert polygon_area(exterior) > 0 and all(polygon_area(hole) < 0 for hole in holes)
        piece = rasterise(np.asarray(exterior) - [5, 7], mask.shape)
        for hole in holes:
            piece &= ~rasterise(np.asarray(hole) - [5, 7], mask.shape)
        assert not (drawn & piece).any()  # pieces never overlap
        drawn |= piece
    np.testing.assert_array_equal(drawn, mask)


def test_corner_touching_ring_closes_into_a_simple_polygon():
    mask = np.array([[1, 1, 1, 0],
                     [1, 0, 0, 1],
                     [1, 1, 1, 1]], bool)  # closes only diagonally at the top right
    polygon = outline(mask)
    assert polygon == [[0, 0], [3, 0], [3, 1], [4, 1], [4, 3], [0, 3], [0, 0]]


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_give_simple_rings_that_rasterise_back(seed):
    rng = np.random.default_rng(seed)
    mask = ndi.binary_closing(rng.random((24, 20)) < 0.6) & (rng.random((24, 20)) > 0.1)  # holes, corner pinches
    polygon = outline(mask, origin=(5, 7))
    assert polygon[0] == polygon[-1]
    vertices = [tuple(v) for v in polygon[:-1]]
    assert len(set(vertices)) == len(vertices)  # no vertex visited twice: no pinch, one ring
    pieces, n = ndi.label(mask)
    largest = pieces == np.bincount(pieces.ravel())[1:].argmax() + 1
    filled = ndi.binary_fill_holes(largest)
    shifted = np.asarray(polygon) - [5, 7]
    assert polygon_area(polygon) == filled.sum() > 0
    np.testing.assert_array_equal(rasterise(shifted, mask.shape), filled)


def test_synthetic_tile_polygons_match_every_cell_exactly():
    tile, instances = tile_instances(3)
    cells = cells_of(instances, NAMES)
    assert [c.id for c in cells] == list(range(1, len(instances) + 1))
    covered = np.zeros(tile.instances.shape, np.int32)
    for cell in cells:
        pixels = tile.instances == cell.id
        rows, cols = np.nonzero(pixels)
        assert cell.area == pixels.sum()
        assert cell.centroid == pytest.approx((cols.mean(), rows.mean()))
        assert cell.bbox == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert abs(polygon_area(cell.polygon) - cell.area) <= 0.02 * cell.area
        covered += rasterise(cell.polygon, pixels.shape)
    assert covered.max() == 1  # polygons of touching cells never overlap
    np.testing.assert_array_equal(covered > 0, tile.instances > 0)


def test_empty_and_inconsistent_instances():
    empty = instances_of(np.zeros((16, 16), np.int32))
    assert cells_of(empty, NAMES) == []
    assert class_counts(empty, NAMES) == {"tumour": 0, "lymphocyte": 0, "stromal": 0}
    with pytest.raises(ValueError, match="ids up to 2"):
        cells_of(Instances(np.array([[1, 2]], np.int32), np.ones(1, np.int32), np.ones(1, np.float32),
                           np.ones(1, np.float32)), NAMES)
    with pytest.raises(ValueError, match="class ids start at 1"):
        cells_of(instances_of(np.array([[1]]), [0]), NAMES)


def test_class_counts_list_every_class():
    labels = np.array([[1, 2, 3, 4]], np.int32)
    assert class_counts(instances_of(labels, [1, 3, 3, 1]), NAMES) == {"tumour": 2, "lymphocyte": 0, "stromal": 2}
    assert class_counts(instances_of(labels), ()) == {"cell": 4}
    assert class_counts(instances_of(labels, [1, 1, 1, 5]), NAMES)["class_5"] == 1


def test_class_colors_are_fixed_and_distinct():
    assert class_color(1) == PALETTE[0] and class_color(len(PALETTE) + 1) == PALETTE[0]
    assert len(set(PALETTE)) == len(PALETTE)
    with pytest.raises(ValueError):
        class_color(0)


def test_cells_of_is_fast_enough_for_a_request():
    _, instances = tile_instances(5)
    cells_of(instances, NAMES)
    start = time.perf_counter()
    for _ in range(5):
        cells_of(instances, NAMES)
    assert (time.perf_counter() - start) / 5 < 0.05  # a few ms in practice; loose for slow runners


# --- GeoJSON ----------------------------------------------------------------------------------


def test_geojson_is_a_qupath_feature_collection():
    labels = np.zeros((10, 20), np.int32)
    labels[1:3, 10:17] = 1  # wide, not tall: a swapped x/y would show
    labels[6, 2] = 2
    cells = cells_of(instances_of(labels, [3, 1]), NAMES)
    collection = json.loads(json.dumps(to_geojson(cells, image_name="tile_7"), allow_nan=False))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    feature = collection["features"][0]
    assert feature["type"] == "Feature"
    assert uuid.UUID(feature["id"]).version == 5
    assert feature["geometry"]["type"] == "Polygon"
    (ring,) = feature["geometry"]["coordinates"]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert min(x for x, _ in ring) == 10 and max(x for x, _ in ring) == 17
    assert min(y for _, y in ring) == 1 and max(y for _, y in ring) == 3
    properties = feature["properties"]
    assert properties["objectType"] == "detection" and properties["isLocked"] is False
    assert properties["classification"] == {"name": "stromal", "color": list(class_color(3))}
    assert properties["measurements"] == {"score": pytest.approx(0.75), "class_confidence": 0.5,
                                          "area": 14.0}
    ids = [f["id"] for f in collection["features"]]
    assert len(set(ids)) == 2
    assert ids == [f["id"] for f in to_geojson(cells, image_name="tile_7")["features"]]  # deterministic
    assert ids[0] != to_geojson(cells, image_name="tile_8")["features"][0]["id"]


def test_geojson_of_nothing_and_non_finite_measurements():
    assert to_geojson([]) == {"type": "FeatureCollection", "features": []}
    cells = cells_of(instances_of(np.array([[0, 1]]), score=float("nan"), confidence=float("inf")), ())
    text = json.dumps(to_geojson(cells, class_colors={1: (1, 2, 3)}), allow_nan=False)
    properties = json.loads(text)["features"][0]["properties"]
    assert properties["measurements"] == {"area": 1.0}
    assert properties["classification"] == {"name": "cell", "color": [1, 2, 3]}


# --- overlay ----------------------------------------------------------------------------------


def test_overlay_outlines_in_class_colour_and_leaves_background_alone():
    image = np.full((40, 40, 3), 200, np.uint8)
    labels = np.zeros((40, 40), np.int32)
    labels[10:20, 10:20] = 1
    drawn = overlay(image, instances_of(labels, [2]), NAMES)
    assert drawn.shape == (40, 40, 3) and drawn.dtype == np.uint8
    assert tuple(drawn[10, 15]) == class_color(2)  # the outline
    assert tuple(drawn[15, 15]) != (200, 200, 200) and tuple(drawn[15, 15]) != class_color(2)  # light fill
    np.testing.assert_array_equal(drawn[25:, :], image[25:, :])  # far from the cell: untouched
    np.testing.assert_array_equal(overlay(image, instances_of(np.zeros((40, 40))), NAMES), image)
    gray = overlay(image[..., 0], instances_of(labels), ())
    assert gray.shape == (40, 40, 3)
    with pytest.raises(ValueError):
        overlay(image[:30], instances_of(labels), NAMES)


def test_overlay_of_a_synthetic_tile_keeps_background():
    tile, instances = tile_instances(7, n_classes=6)
    drawn = overlay(tile.image, instances, CLASS_NAMES)
    far = ndi.distance_transform_edt(tile.instances == 0) > 3
    assert np.abs(drawn[far].astype(int) - tile.image[far]).max() == 0
    ring = (tile.instances > 0) & ~ndi.binary_erosion(tile.instances > 0)
    assert (drawn[ring] != tile.image[ring]).any(axis=-1).mean() > 0.9
    legend = legend_image(CLASS_NAMES, class_counts(instances, CLASS_NAMES), width=256)
    assert legend.shape[1] == 256 and legend.shape[2] == 3 and legend.dtype == np.uint8
    assert (legend != 255).any()


# --- prediction folder ------------------------------------------------------------------------


def test_write_prediction_round_trips_through_the_folder_reader(tmp_path):
    tile, instances = tile_instances(2)
    empty = instances_of(np.zeros((32, 48), np.int32))
    paths = write_prediction(tmp_path, "tile_a", tile.image, instances, NAMES)
    assert set(paths) == {"labels", "geojson", "cells", "overlay"}
    assert all(p.is_file() for p in paths.values())
    assert set(write_prediction(tmp_path, "tile_b@0_0", None, empty, NAMES)) == {"labels", "geojson", "cells"}
    assert write_class_names(tmp_path, NAMES) == tmp_path / "classes.json"
    assert not list(tmp_path.rglob("*.tmp*"))

    source = open_label_source(f"folder:{tmp_path}")
    assert tuple(source.class_names) == NAMES
    assert list(source.names) == ["tile_a", "tile_b@0_0"]
    read = source[0]
    np.testing.assert_array_equal(read.instances, tile.instances)
    np.testing.assert_array_equal(read.classes, tile.classes)
    assert source[1].instances.shape == (32, 48) and not source[1].instances.any()

    with paths["cells"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(instances)
    assert int(rows[0]["area"]) == int((tile.instances == 1).sum())
    geojson = json.loads(paths["geojson"].read_text())
    assert len(geojson["features"]) == len(instances)
    with Image.open(paths["overlay"]) as png:
        assert png.size == (256, 256)  # pixel for pixel over the tile
    with Image.open(tmp_path / "overlays" / "legend.png") as legend:
        assert legend.width == 320 and (np.asarray(legend) != 255).any()
    empty_geojson = json.loads((tmp_path / "geojson" / "tile_b@0_0.geojson").read_text())
    assert empty_geojson == {"type": "FeatureCollection", "features": []}


def test_untyped_class_names_are_written_as_cell(tmp_path):
    write_prediction(tmp_path, "x", None, instances_of(np.array([[0, 1]])), ())
    write_class_names(tmp_path, ())
    assert json.loads((tmp_path / "classes.json").read_text()) == {"1": "cell"}
    assert tuple(open_label_source(f"folder:{tmp_path}").class_names) == ("cell",)


@pytest.mark.parametrize("name", ["", "a/b", "../x", "..", ".hidden", "a\\b", "tab\tname", " padded"])
def test_unsafe_names_are_rejected(tmp_path, name):
    with pytest.raises(OutputNameError):
        write_prediction(tmp_path, name, None, instances_of(np.array([[1]])), ())
    assert not any(tmp_path.iterdir())
