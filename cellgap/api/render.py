"""Instances of one image as the service answers them: cells JSON, QuPath GeoJSON, an overlay PNG."""
from __future__ import annotations

import base64
import io

import numpy as np

from cellgap.api.schemas import CellOut, PredictResponse
from cellgap.decoder.outputs import cells_of, class_counts, overlay, to_geojson
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
        cells=[CellOut(id=c.id, class_id=c.class_id, class_name=c.class_name, score=c.score,
                       class_confidence=c.class_confidence,
                       centroid=c.centroid, bbox=c.bbox, area=c.area, polygon=[tuple(p) for p in c.polygon])
               for c in cells],
        overlay_png=base64.b64encode(overlay_png(image, instances, class_names)).decode() if with_overlay else None,
    )


def geojson(instances: Instances, class_names: tuple[str, ...], name: str = "") -> dict:
    """A QuPath-compatible FeatureCollection of the cells."""
    return to_geojson(cells_of(instances, class_names), image_name=name)
