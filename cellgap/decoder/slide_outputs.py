"""A slide's results, written so that no step holds more than one region's cells and a kill loses no finished region.

Each region's cells go to a part file of their own (parts/NNNNNNN.json.gz, renamed in whole)
the moment the region is done; a rerun skips regions with a part. When every region is done the
parts are streamed, in grid order, into the slide's outputs, each written beside its target and
renamed in: QuPath GeoJSON (gzipped, one detection per nucleus), the cells CSV and a thumbnail
with the nuclei drawn. Cell ids are region index * 65536 + the cell's number in its region, so a
rerun gives every nucleus the same id and the same feature uuid.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellgap.core.atomic import temporary_beside, write_atomically
from cellgap.decoder.outputs import CSV_COLUMNS, Cell, class_color, detection_feature, feature_id
from cellgap.featurestore.slides.grid import Region

ID_STRIDE = 65536  # cells per region at most (a 1536 px region at 40x holds a few thousand)
SLIDE_CSV_COLUMNS = (*CSV_COLUMNS, "area_um2")
PLAN = "plan.json"


@dataclass(frozen=True)
class SlidePaths:
    """Where one slide's results go, all named after the slide."""

    out: Path
    name: str

    @property
    def geojson(self) -> Path:
        return self.out / f"{self.name}.geojson.gz"

    @property
    def cells(self) -> Path:
        return self.out / f"{self.name}.cells.csv"

    @property
    def overlay(self) -> Path:
        return self.out / f"{self.name}.overlay.png"

    @property
    def tissue(self) -> Path:
        return self.out / f"{self.name}.tissue.png"

    @property
    def labels(self) -> Path:
        return self.out / f"{self.name}.labels.zarr"

    @property
    def summary(self) -> Path:
        return self.out / f"{self.name}.json"

    @property
    def parts(self) -> Path:
        return self.out / f".{self.name}.parts"

    def part(self, region: Region) -> Path:
        return self.parts / f"{region.index:07d}.json.gz"


@dataclass(frozen=True)
class Placement:
    """How a region's window maps to level 0: level-0 = (window origin + window pixel) * scale."""

    x: int
    y: int
    scale: float
    mpp: float

    def point(self, x: float, y: float) -> tuple[float, float]:
        """A pixel-centre point (centroid) of the window in level-0 pixel-centre units."""
        return (self.x + x + 0.5) * self.scale - 0.5, (self.y + y + 0.5) * self.scale - 0.5

    def edge(self, x: float, y: float) -> tuple[float, float]:
        """A pixel-edge point (polygon vertex, bbox corner) of the window in level-0 pixel-edge units."""
        return (self.x + x) * self.scale, (self.y + y) * self.scale


def cell_id(region: Region, number: int) -> int:
    if number >= ID_STRIDE:
        raise ValueError(f"region {region.index} holds more than {ID_STRIDE - 1} cells")
    return region.index * ID_STRIDE + number


def region_part(slide_name: str, region: Region, cells: list[Cell], placement: Placement) -> dict[str, Any]:
    """The GeoJSON features and CSV rows of a region's kept cells, in level-0 coordinates."""
    features, rows = [], []
    pixel_area = placement.scale**2
    for number, cell in enumerate(cells, start=1):
        identifier = cell_id(region, number)
        shapes = [[[list(placement.edge(x, y)) for x, y in ring] for ring in piece] for piece in cell.shapes]
        area_px = cell.area * pixel_area
        area_um2 = area_px * placement.mpp**2
        measurements = {"score": cell.score, "class_confidence": cell.class_confidence, "area": round(area_px, 3),
                        "area_um2": round(area_um2, 4)}
        features.append(detection_feature(feature_id(slide_name, identifier), shapes, cell.class_name,
                                          class_color(cell.class_id), measurements))
        cx, cy = placement.point(*cell.centroid)
        x0, y0 = placement.edge(cell.bbox[0], cell.bbox[1])
        x1, y1 = placement.edge(cell.bbox[2], cell.bbox[3])
        rows.append([identifier, cell.class_id, cell.class_name, f"{cell.score:.6g}", f"{cell.class_confidence:.6g}",
                     f"{cx:.3f}", f"{cy:.3f}", f"{x0:.6g}", f"{y0:.6g}", f"{x1:.6g}", f"{y1:.6g}", f"{area_px:.6g}",
                     f"{area_um2:.6g}"])
    return {"region": region.index, "features": features, "rows": rows}


def write_part(paths: SlidePaths, region: Region, part: dict[str, Any]) -> None:
    """The region's part, durable and whole: from now on a rerun skips this region."""
    data = gzip.compress(json.dumps(part, allow_nan=False, separators=(",", ":")).encode(), compresslevel=3)
    write_atomically(paths.part(region), data, durable=True)


def read_part(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def prepare_parts(paths: SlidePaths, plan: dict[str, Any]) -> bool:
    """Make the parts folder ready for `plan`; True when it holds parts of the same plan to resume.

    Parts of another plan (other run, regions or thresholds) would mix two predictions: they go.
    """
    plan_path = paths.parts / PLAN
    if plan_path.is_file():
        try:
            same = json.loads(plan_path.read_text()) == plan
        except (OSError, ValueError):
            same = False
        if same:
            return True
        shutil.rmtree(paths.parts)
    paths.parts.mkdir(parents=True, exist_ok=True)
    write_atomically(plan_path, json.dumps(plan, indent=1, sort_keys=True), durable=True)
    return False


def merged_parts(paths: SlidePaths, regions: list[Region]) -> Iterator[dict[str, Any]]:
    for region in regions:
        yield read_part(paths.part(region))


def write_slide_outputs(paths: SlidePaths, regions: list[Region], thumbnail: np.ndarray,
                        thumbnail_downsample: float) -> int:
    """Stream every region's part into the GeoJSON, the CSV and the thumbnail overlay; the cell count."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(thumbnail).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    geojson_tmp, csv_tmp = temporary_beside(paths.geojson), temporary_beside(paths.cells)
    cells = 0
    try:
        with gzip.open(geojson_tmp, "wt", compresslevel=6) as geojson, open(csv_tmp, "w", newline="") as table:
            writer = csv.writer(table, lineterminator="\n")
            writer.writerow(SLIDE_CSV_COLUMNS)
            geojson.write('{"type":"FeatureCollection","features":[')
            for part in merged_parts(paths, regions):
                for feature, row in zip(part["features"], part["rows"]):
                    geojson.write(("," if cells else "") + json.dumps(feature, separators=(",", ":")))
                    writer.writerow(row)
                    _draw_cell(draw, feature, thumbnail_downsample)
                    cells += 1
            geojson.write("]}\n")
        os.replace(geojson_tmp, paths.geojson)
        os.replace(csv_tmp, paths.cells)
    except BaseException:
        geojson_tmp.unlink(missing_ok=True)
        csv_tmp.unlink(missing_ok=True)
        raise
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=3)
    write_atomically(paths.overlay, buffer.getvalue())
    return cells


def _draw_cell(draw: Any, feature: dict[str, Any], downsample: float) -> None:
    geometry = feature["geometry"]
    pieces = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    color = tuple(feature["properties"]["classification"]["color"])
    for piece in pieces:
        ring = [(x / downsample, y / downsample) for x, y in piece[0]]
        if len(ring) >= 3:
            draw.polygon(ring, fill=color, outline=color)


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    write_atomically(path, buffer.getvalue())


class LabelWriter:
    """The instance labels of a slide as a chunked int32 Zarr at level-0 resolution (ids as in the CSV)."""

    def __init__(self, path: Path, width: int, height: int, chunk: int = 1024) -> None:
        import zarr

        self.width, self.height = width, height
        if path.exists():
            self.array = zarr.open_array(str(path), mode="r+")
            if tuple(self.array.shape) != (height, width):
                raise ValueError(f"{path}: holds labels of shape {self.array.shape}, the slide is {(height, width)}")
        else:
            self.array = zarr.create_array(str(path), shape=(height, width), chunks=(chunk, chunk), dtype="int32",
                                           fill_value=0)

    def write(self, labels: np.ndarray, placement: Placement) -> None:
        """Paint a window's kept cells (labels already carrying their slide ids; 0 elsewhere) into the map."""
        if not labels.any():
            return
        x0, y0 = round(placement.x * placement.scale), round(placement.y * placement.scale)
        height, width = round(labels.shape[0] * placement.scale), round(labels.shape[1] * placement.scale)
        if (height, width) != labels.shape:
            rows = np.minimum((np.arange(height) / placement.scale).astype(np.int64), labels.shape[0] - 1)
            cols = np.minimum((np.arange(width) / placement.scale).astype(np.int64), labels.shape[1] - 1)
            labels = labels[rows[:, None], cols[None, :]]
        r0, c0 = max(0, y0), max(0, x0)
        r1, c1 = min(self.height, y0 + height), min(self.width, x0 + width)
        if r1 <= r0 or c1 <= c0:
            return
        piece = labels[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
        current = np.asarray(self.array[r0:r1, c0:c1])
        current[piece > 0] = piece[piece > 0]
        self.array[r0:r1, c0:c1] = current
