"""Predicted instances as the files pathologists' tools read: cell tables, QuPath GeoJSON, overlays.

Coordinates: centroids are in pixel-index units (pixel (r, c) is the point x=c, y=r, as the metrics'
detection matching uses them); bounding boxes and polygons are in pixel-edge units (pixel (r, c) is
the square [c, c+1] x [r, r+1], QuPath's convention), so a bbox max is exclusive and a one-pixel
cell's polygon is the unit square.

Polygons trace the pixel edges of each cell and keep only the corners (collinear vertices dropped).
Nothing is approximated, and cells that touch share edges instead of crossing. In GeoJSON a cell is
its whole shape: a Polygon with its holes as interior rings, or a MultiPolygon when it lies in
several 4-connected pieces, so the geometry's area is the cell's pixel count. `Cell.polygon`
(the CSV-free JSON answers) is the outer ring of the largest piece, holes filled.
"""
from __future__ import annotations

import csv
import io
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cellgap.core.atomic import write_atomically
from cellgap.decoder.errors import DecoderError
from cellgap.decoder.postprocess import Instances

RGB = tuple[int, int, int]

# Okabe-Ito (colour-blind safe; black left out, it vanishes on haematoxylin), then Paul Tol's muted set.
PALETTE: tuple[RGB, ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167),
    (204, 102, 119), (51, 34, 136), (221, 204, 119), (17, 119, 51), (136, 204, 238), (136, 34, 85),
    (68, 170, 153), (153, 153, 51), (170, 68, 153),
)
UNTYPED_NAME = "cell"  # the one class of data sets without class names
CSV_COLUMNS = ("id", "class_id", "class_name", "score", "class_confidence", "centroid_x", "centroid_y",
               "x_min", "y_min", "x_max", "y_max", "area")
_FOUR = ndi.generate_binary_structure(2, 1)
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cellgap/detections")


class OutputNameError(DecoderError, ValueError):
    """An image name that cannot be used as a file name inside the output folder."""


@dataclass(frozen=True)
class Cell:
    """One predicted nucleus, as listed in the CSV/API and drawn in GeoJSON.

    centroid (x, y): mean column/row of its pixels. bbox (x_min, y_min, x_max, y_max) and polygon
    (closed ring of [x, y], first vertex repeated last, positive shoelace area) in pixel-edge units;
    `shapes` is the whole cell (every piece with its holes, see `shapes()`), `polygon` its first ring.
    """

    id: int
    class_id: int
    class_name: str
    score: float  # detection: mean foreground probability over the cell
    class_confidence: float  # the type's share of the real classes' probability over the cell
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: int
    shapes: list[list[list[list[float]]]]

    @property
    def polygon(self) -> list[list[float]]:
        """The outer ring of the largest piece, holes filled."""
        return self.shapes[0][0]


def class_color(class_id: int) -> RGB:
    """The fixed colour of a class id (1-based), the same in overlays, legends and GeoJSON."""
    if class_id < 1:
        raise ValueError(f"class ids start at 1, got {class_id}")
    return PALETTE[(class_id - 1) % len(PALETTE)]


def class_name(class_id: int, class_names: Sequence[str]) -> str:
    """Name of a class id; ids beyond the names are `class_<id>`, as the folder reader names them."""
    names = tuple(class_names) or (UNTYPED_NAME,)
    return names[class_id - 1] if 1 <= class_id <= len(names) else f"class_{class_id}"


def class_counts(instances: Instances, class_names: tuple[str, ...]) -> dict[str, int]:
    """Cells per class name, in class-id order, every named class listed (zero counts included)."""
    _check_instances(instances)
    names = tuple(class_names) or (UNTYPED_NAME,)
    counts = np.bincount(np.asarray(instances.classes, dtype=np.int64), minlength=len(names) + 1)
    result = {name: 0 for name in names}
    for class_id in np.flatnonzero(counts).tolist():  # ids beyond the names count as class_<id>
        name = class_name(class_id, names)
        result[name] = result.get(name, 0) + int(counts[class_id])
    return result


def cells_of(instances: Instances, class_names: tuple[str, ...]) -> list[Cell]:
    """Every instance with pixels as a Cell, in id order (ids without pixels are left out)."""
    labels = _check_instances(instances)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return []
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    ids = flat[inside]
    area = np.bincount(ids, minlength=n + 1)
    rows, cols = np.divmod(inside, labels.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_x = np.bincount(ids, weights=cols, minlength=n + 1) / area
        centre_y = np.bincount(ids, weights=rows, minlength=n + 1) / area
    classes, scores, confidences = instances.classes.tolist(), instances.scores.tolist(), instances.confidences.tolist()
    cells = []
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        cell_id = index + 1
        y0, x0 = box[0].start, box[1].start
        cells.append(Cell(
            id=cell_id,
            class_id=int(classes[index]),
            class_name=class_name(int(classes[index]), class_names),
            score=round(float(scores[index]), 6),  # float32 digits, not its binary noise
            class_confidence=round(float(confidences[index]), 6),
            centroid=(float(centre_x[cell_id]), float(centre_y[cell_id])),
            bbox=(x0, y0, box[1].stop, box[0].stop),
            area=int(area[cell_id]),
            shapes=shapes(labels[box] == cell_id, origin=(x0, y0)),
        ))
    return cells


def shapes(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> list[list[list[list[float]]]]:
    """Every 4-connected piece of a mask as a polygon, largest first: [exterior ring, hole rings...].

    Exterior rings have a positive shoelace area, holes a negative one (RFC 7946's orders); the
    areas add up to the mask's pixel count. A piece lying in another's hole is a polygon of its own.
    """
    pieces, n = ndi.label(_padded(mask), structure=_FOUR)
    polygons = []
    for piece in _largest_first(pieces, n):
        grid = pieces == piece
        filled = _filled(grid)
        rings = [_ring(filled, origin)]
        holes, n_holes = ndi.label(filled & ~grid, structure=_FOUR)
        for hole in range(1, n_holes + 1):
            rings.append(_ring(_filled(holes == hole), origin)[::-1])
        polygons.append(rings)
    return polygons


def _padded(mask: np.ndarray) -> np.ndarray:
    """The mask inside a one-pixel empty border: rings never touch the array's edge."""
    grid = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    grid[1:-1, 1:-1] = mask
    return grid


def _largest_first(pieces: np.ndarray, n: int) -> list[int]:
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    return [int(k) + 1 for k in np.argsort(-sizes[1:], kind="stable")]


def _filled(grid: np.ndarray) -> np.ndarray:
    """The grid with every background region the border does not reach (4-connected) filled in."""
    background = ndi.label(~grid, structure=_FOUR)[0]
    return background != background[0, 0]


def _ring(grid: np.ndarray, origin: tuple[int, int]) -> list[list[float]]:
    """The closed corner ring around one filled, 4-connected piece of a padded grid."""
    height, width = grid.shape
    stride = width + 1  # vertices (x, y), x in 0..width, y in 0..height, have key y * stride + x
    # Directed unit edges with the cell on the right when walking in image coordinates (y down).
    rows, cols = np.nonzero(grid[:, 1:] != grid[:, :-1])  # vertical edge at x = col + 1, y row..row+1
    east = grid[rows, cols + 1]
    top, bottom = rows * stride + cols + 1, (rows + 1) * stride + cols + 1
    starts, ends = [np.where(east, bottom, top)], [np.where(east, top, bottom)]
    rows, cols = np.nonzero(grid[1:, :] != grid[:-1, :])  # horizontal edge at y = row + 1, x col..col+1
    south = grid[rows + 1, cols]
    left, right = (rows + 1) * stride + cols, (rows + 1) * stride + cols + 1
    starts.append(np.where(south, left, right))
    ends.append(np.where(south, right, left))
    start, end = np.concatenate(starts), np.concatenate(ends)
    successor = np.zeros((height + 1) * stride, dtype=np.int64)
    successor[start] = end
    following = successor.tolist()
    first = int(start.min())  # the top row's leftmost vertex: a corner
    walk, key = [first], following[first]
    while key != first:
        walk.append(key)
        key = following[key]
    ring = np.asarray(walk)
    y, x = np.divmod(ring, stride)
    step = successor[ring] - ring  # key difference of the step out of each vertex
    corner = np.empty(len(ring), dtype=bool)
    corner[0] = True
    corner[1:] = step[1:] != step[:-1]  # the step in differs from the step out
    x = x[corner] + (origin[0] - 1)  # undo the padding
    y = y[corner] + (origin[1] - 1)
    polygon = np.stack([x, y], axis=1).astype(float).tolist()
    return polygon + [list(polygon[0])]


def to_geojson(cells: list[Cell], *, image_name: str = "",
               class_colors: Mapping[int, RGB] | None = None) -> dict:
    """A GeoJSON FeatureCollection of QuPath detections (File > Import objects reads it).

    Feature ids are uuid5 of (image_name, cell id): stable across runs, distinct across the tiles
    of one image when each tile has its own name. `class_colors` overrides the palette per class id.
    Non-finite measurements are left out, so the dict always serialises as strict JSON.
    """
    features = []
    for cell in cells:
        color = (class_colors or {}).get(cell.class_id) or class_color(cell.class_id)
        measurements = {"score": cell.score, "class_confidence": cell.class_confidence, "area": float(cell.area)}
        features.append(detection_feature(feature_id(image_name, cell.id), cell.shapes, cell.class_name, color,
                                          measurements))
    return {"type": "FeatureCollection", "features": features}


def feature_id(image_name: str, cell_id: int | str) -> str:
    """The stable uuid5 of a cell of an image (the same on every run that finds it)."""
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{image_name}#{cell_id}"))


def detection_feature(identifier: str, cell_shapes: list[list[list[list[float]]]], name: str, color: RGB,
                      measurements: Mapping[str, float]) -> dict:
    """One QuPath detection: the cell's whole shape, its class and colour, its finite measurements."""
    return {
        "type": "Feature",
        "id": identifier,
        "geometry": ({"type": "Polygon", "coordinates": cell_shapes[0]} if len(cell_shapes) == 1
                     else {"type": "MultiPolygon", "coordinates": cell_shapes}),
        "properties": {
            "objectType": "detection",
            "classification": {"name": name, "color": [int(c) for c in color]},
            "measurements": {k: float(v) for k, v in measurements.items() if math.isfinite(v)},
            "isLocked": False,
        },
    }


def overlay(image: np.ndarray, instances: Instances, class_names: tuple[str, ...],
            alpha: float = 0.35) -> np.ndarray:
    """(H,W,3) uint8: the image with each cell filled at `alpha` and outlined (inner 1 px ring) in its class colour.

    Touching cells each draw their own ring, so a shared border reads as a 2 px two-colour line.
    `class_names` is unused for drawing (colours follow class ids) and kept for a uniform signature.
    """
    labels = _check_instances(instances)
    rgb = _as_rgb(image, labels.shape)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if labels.size == 0 or not labels.any():
        return rgb.copy()
    colours = np.array([(0, 0, 0)] + [class_color(k) for k in instances.classes.tolist()], dtype=np.float32)
    cell_colour = colours[labels]  # (H,W,3), per instance via its class
    foreground = labels > 0
    out = rgb.astype(np.float32)
    out[foreground] += alpha * (cell_colour[foreground] - out[foreground])
    ring = foreground & ((ndi.maximum_filter(labels, size=3, mode="constant") != labels)
                         | (ndi.minimum_filter(labels, size=3, mode="constant") != labels))
    out[ring] = cell_colour[ring]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def legend_image(class_names: tuple[str, ...], counts: Mapping[str, int] | None = None,
                 width: int = 256) -> np.ndarray:
    """(h,width,3) uint8 white strip: a colour swatch and "name (count)" per named class, wrapped to `width`."""
    from PIL import Image, ImageDraw, ImageFont

    names = tuple(class_names) or (UNTYPED_NAME,)
    font = ImageFont.load_default(size=12)
    swatch, gap, line = 10, 12, 18
    entries = [(class_color(k), name + (f" ({counts.get(name, 0)})" if counts is not None else ""))
               for k, name in enumerate(names, start=1)]
    places, x, y = [], 4, 3
    for colour, text in entries:
        size = swatch + 4 + int(font.getlength(text))
        if x > 4 and x + size > width - 4:
            x, y = 4, y + line
        places.append((x, y, colour, text))
        x += size + gap
    canvas = Image.new("RGB", (max(width, 1), y + line), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for x, y, colour, text in places:
        draw.rectangle([x, y + 3, x + swatch, y + 3 + swatch], fill=colour, outline=(60, 60, 60))
        draw.text((x + swatch + 4, y + 1), text, fill=(20, 20, 20), font=font)
    return np.asarray(canvas)


def write_prediction(out_dir: Path, name: str, image: np.ndarray | None, instances: Instances,
                     class_names: tuple[str, ...]) -> dict[str, Path]:
    """Write one image's prediction; returns {"labels", "geojson", "cells"[, "overlay"]} -> path.

    labels/<name>.npy (H,W,2) int32 (instance id, class id per pixel) is the `folder` layout that
    `cellgap evaluate --pred folder:OUT_DIR` reads; the overlay PNG (only with an image) is the
    image's size, pixel for pixel (the colours' legend is overlays/legend.png, written by
    `write_class_names`). Files are replaced atomically.
    """
    _check_name(name)
    labels = _check_instances(instances)
    out_dir = Path(out_dir)
    cells = cells_of(instances, class_names)
    paths = {"labels": out_dir / "labels" / f"{name}.npy", "geojson": out_dir / "geojson" / f"{name}.geojson",
             "cells": out_dir / "cells" / f"{name}.csv"}
    buffer = io.BytesIO()
    np.save(buffer, np.stack([labels, instances.class_map().astype(np.int32)], axis=-1), allow_pickle=False)
    _write(paths["labels"], buffer.getvalue())
    geojson = json.dumps(to_geojson(cells, image_name=name), allow_nan=False, separators=(",", ":"))
    _write(paths["geojson"], geojson.encode())
    _write(paths["cells"], cells_csv(cells).encode())
    if image is not None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(overlay(image, instances, class_names)).save(buffer, format="PNG", compress_level=3)
        paths["overlay"] = out_dir / "overlays" / f"{name}.png"
        _write(paths["overlay"], buffer.getvalue())
    return paths


def write_class_names(out_dir: Path, class_names: tuple[str, ...]) -> Path:
    """out_dir/classes.json {"1": name, ...}, read back by the folder label reader ("cell" when untyped),
    and overlays/legend.png, the class colours of every overlay in the folder."""
    from PIL import Image

    names = tuple(class_names) or (UNTYPED_NAME,)
    path = Path(out_dir) / "classes.json"
    _write(path, (json.dumps({str(k): n for k, n in enumerate(names, start=1)}, indent=1) + "\n").encode())
    buffer = io.BytesIO()
    Image.fromarray(legend_image(class_names, width=320)).save(buffer, format="PNG")
    _write(Path(out_dir) / "overlays" / "legend.png", buffer.getvalue())
    return path


def cells_csv(cells: list[Cell]) -> str:
    """The cells table as CSV text with a header row (CSV_COLUMNS)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for cell in cells:
        writer.writerow([cell.id, cell.class_id, cell.class_name, f"{cell.score:.6g}", f"{cell.class_confidence:.6g}",
                         f"{cell.centroid[0]:.3f}", f"{cell.centroid[1]:.3f}", *cell.bbox, cell.area])
    return text.getvalue()


def _check_instances(instances: Instances) -> np.ndarray:
    labels = np.asarray(instances.labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"instance labels must be an (H,W) integer map, got {labels.shape} {labels.dtype}")
    n = int(labels.max()) if labels.size else 0
    if labels.size and labels.min() < 0:
        raise ValueError("instance labels must be >= 0")
    if len(instances.classes) < n or not len(instances.scores) == len(instances.confidences) == len(instances.classes):
        raise ValueError(f"labels hold ids up to {n} but there are {len(instances.classes)} classes, "
                         f"{len(instances.scores)} scores and {len(instances.confidences)} confidences")
    if len(instances.classes) and int(np.min(instances.classes)) < 1:
        raise ValueError(f"class ids start at 1, got {int(np.min(instances.classes))}")
    return labels.astype(np.int32, copy=False)


def _as_rgb(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != tuple(shape):
        raise ValueError(f"image must be (H,W,3) with H,W = {tuple(shape)}, got {image.shape}")
    return image


def _check_name(name: str) -> None:
    """Reject names that would leave the output folder or hide a file: separators, '..', control characters."""
    bad = (not name or name != name.strip() or name.startswith(".") or ".." in name
           or any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name))
    if bad:
        raise OutputNameError(f"cannot use {name!r} as an output file name (no '/', '\\', '..', leading '.', "
                              "surrounding spaces or control characters)")


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
