"""Instances of one image or slide region as the service answers them: cells JSON, QuPath GeoJSON, an overlay PNG."""
from __future__ import annotations

import base64
import io

import numpy as np

from cellgap.api.schemas import CellOut, PredictResponse, RegionResponse
from cellgap.api.slides import RegionPlan, level0_cells
from cellgap.decoder.outputs import Cell, cells_of, class_counts, overlay, to_geojson
from cellgap.decoder.postprocess import Instances


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def overlay_png(image: np.ndarray, instances: Instances, class_names: tuple[str, ...]) -> bytes:
    """The image with every cell filled and outlined in its class colour, as PNG bytes."""
    return encode_png(overlay(image, instances, class_names))


def cells_response(image: np.ndarray, instances: Instances, *, class_names: tuple[str, ...], model_id: str,
                   tile_size: int, name: str = "", with_overlay: bool = False) -> PredictResponse:
    """The JSON answer for one image."""
    height, width = image.shape[:2]
    cells = cells_of(instances, class_names)
    return PredictResponse(
        name=name, width=width, height=height, model_id=model_id,
        sliding_window=height > tile_size or width > tile_size,
        n_cells=len(cells), counts=class_counts(instances, class_names),
        cells=[cell_out(c) for c in cells],
        overlay_png=base64.b64encode(overlay_png(image, instances, class_names)).decode() if with_overlay else None,
    )


def cell_out(cell: Cell) -> CellOut:
    return CellOut(id=cell.id, class_id=cell.class_id, class_name=cell.class_name, score=cell.score,
                   class_confidence=cell.class_confidence, centroid=cell.centroid, bbox=cell.bbox, area=cell.area,
                   polygon=[(p[0], p[1]) for p in cell.polygon])


def region_response(image: np.ndarray, instances: Instances, plan: RegionPlan, *, class_names: tuple[str, ...],
                    model_id: str, tile_size: int, name: str, with_overlay: bool = False) -> RegionResponse:
    """The JSON answer for a slide region: the image's cells moved to level-0 slide pixels."""
    cells = level0_cells(cells_of(instances, class_names), plan)
    height, width = image.shape[:2]
    return RegionResponse(
        name=name, x=plan.x, y=plan.y, width=plan.width, height=plan.height, model_id=model_id,
        sliding_window=height > tile_size or width > tile_size, slide_mpp=plan.mpp, mpp=plan.mpp * plan.scale,
        scale=plan.scale, read_width=width, read_height=height,
        n_cells=len(cells), counts=class_counts(instances, class_names), cells=[cell_out(c) for c in cells],
        overlay_png=base64.b64encode(overlay_png(image, instances, class_names)).decode() if with_overlay else None,
    )


def region_geojson(instances: Instances, plan: RegionPlan, class_names: tuple[str, ...], name: str) -> dict:
    """The region's cells as a QuPath FeatureCollection in level-0 slide pixels; feature ids differ between
    regions of one slide (the region is part of their name)."""
    cells = level0_cells(cells_of(instances, class_names), plan)
    return to_geojson(cells, image_name=f"{name}@{plan.x},{plan.y},{plan.width},{plan.height}")


def geojson(instances: Instances, class_names: tuple[str, ...], name: str = "") -> dict:
    """A QuPath-compatible FeatureCollection of the cells."""
    return to_geojson(cells_of(instances, class_names), image_name=name)
