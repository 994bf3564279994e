"""Typed request and answer bodies of the service, with the examples shown in the OpenAPI document."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_CELL_EXAMPLE: dict[str, Any] = {"id": 1, "class_id": 2, "class_name": "inflammatory", "score": 0.93,
                                   "class_confidence": 0.88,
                 "centroid": [37.4, 12.9], "bbox": [31, 7, 44, 19], "area": 118,
                 "polygon": [[33.0, 7.0], [42.0, 7.0], [42.0, 9.0], [44.0, 9.0], [44.0, 17.0], [40.0, 19.0],
                             [33.0, 19.0], [31.0, 15.0], [31.0, 9.0], [33.0, 7.0]]}


class CellOut(BaseModel):
    """One nucleus. Centroid in pixel-index units; bbox and polygon in pixel-edge units (QuPath's)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_CELL_EXAMPLE]})

    id: int = Field(description="instance id in the label map, 1..n")
    class_id: int = Field(description="cell type id, 1..K")
    class_name: str
    score: float | None = Field(description=(
        "detection score: mean foreground probability over the cell (how sure the model is that a nucleus is "
        "there; see min_score); null if the model's output was not finite"))
    class_confidence: float | None = Field(description=(
        "the chosen type's share of the real classes' probability over the cell; null if not finite"))
    centroid: tuple[float, float] = Field(description="(x, y)")
    bbox: tuple[int, int, int, int] = Field(description="(x_min, y_min, x_max, y_max), max exclusive")
    area: int = Field(description="pixels")
    polygon: list[tuple[float, float]] = Field(description="closed ring of (x, y), first vertex repeated last")


class PredictResponse(BaseModel):
    """Cells found in one image."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "tile.png", "width": 256, "height": 256, "model_id": "convnext_atto-3f2a9c", "sliding_window": False,
        "n_cells": 1, "counts": {"neoplastic": 0, "inflammatory": 1}, "cells": [_CELL_EXAMPLE]}]})

    name: str = Field("", description="the uploaded file's name (used only as a label)")
    width: int
    height: int
    model_id: str
    sliding_window: bool = Field(description="true when the image was larger than a tile")
    n_cells: int
    counts: dict[str, int] = Field(description="cells per class name, every class listed")
    cells: list[CellOut]
    overlay_png: str | None = Field(None, description="base64 PNG of the overlay, only with overlay=true")


MAX_COORDINATE = 2**31 - 1  # level-0 pixels; far beyond any slide, and an int everywhere


class RegionRequest(BaseModel):
    """A region of a slide under the server's slides root, in level-0 (full-resolution) pixels."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"slide": "case-07/slide.svs", "x": 20480, "y": 11264, "width": 1024, "height": 1024}]})

    slide: str = Field(min_length=1, max_length=1024, description=(
        "the slide's path relative to the slides root, '/'-separated; absolute paths, '..' and symbolic links "
        "leading out of the root are refused"))
    x: int = Field(ge=0, le=MAX_COORDINATE, description="left edge, level-0 pixels")
    y: int = Field(ge=0, le=MAX_COORDINATE, description="top edge, level-0 pixels")
    width: int = Field(ge=1, le=MAX_COORDINATE, description="level-0 pixels; x + width at most the slide's width")
    height: int = Field(ge=1, le=MAX_COORDINATE, description="level-0 pixels; y + height at most the slide's height")
    mpp: float | None = Field(None, gt=0, le=1000, allow_inf_nan=False, description=(
        "microns per pixel of the slide at level 0, over what the file records (for slides that record none)"))


class RegionResponse(PredictResponse):
    """Cells found in a slide region; every coordinate (centroid, bbox, polygon) and area is in level-0 slide
    pixels, so the cells overlay the slide in QuPath as they are."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "case-07/slide.svs", "x": 20480, "y": 11264, "width": 1024, "height": 1024,
        "model_id": "convnext_atto-3f2a9c", "sliding_window": True, "slide_mpp": 0.25, "mpp": 0.5, "scale": 2.0,
        "read_width": 512, "read_height": 512, "n_cells": 1, "counts": {"neoplastic": 0, "inflammatory": 1},
        "cells": [{**_CELL_EXAMPLE, "centroid": [20554.3, 11289.3], "bbox": [20542, 11278, 20568, 11302],
                   "area": 472, "polygon": [[20546.0, 11278.0], [20564.0, 11278.0], [20568.0, 11296.0],
                                            [20546.0, 11302.0], [20542.0, 11290.0], [20546.0, 11278.0]]}]}]})

    name: str = Field("", description="the slide, as the request named it")
    width: int = Field(description="of the region, level-0 pixels")
    height: int = Field(description="of the region, level-0 pixels")
    sliding_window: bool = Field(description="true when the image read was larger than a tile")
    x: int = Field(description="the region's left edge, level-0 pixels")
    y: int = Field(description="the region's top edge, level-0 pixels")
    slide_mpp: float = Field(description="microns per pixel of the slide at level 0")
    mpp: float = Field(description="microns per pixel the region was read and predicted at")
    scale: float = Field(description="level-0 pixels per pixel read (1: read as it is; 2: a 40x slide for a 20x model)")
    read_width: int = Field(description="width of the image read and predicted (and of the png overlay)")
    read_height: int = Field(description="height of the image read and predicted (and of the png overlay)")


class BatchResponse(BaseModel):
    """One result per uploaded file, in upload order."""

    model_id: str
    results: list[PredictResponse]


class ModelInfo(BaseModel):
    """The loaded run."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "model_id": "convnext_atto-3f2a9c", "tile_size": 256, "class_names": ["neoplastic", "inflammatory"],
        "run": {"encoder": {"name": "convnext_atto"}, "layers": ["0", "1", "2", "3"], "training": {"best_pq": 0.61}}}]})

    model_id: str
    tile_size: int
    class_names: list[str]
    run: dict[str, Any] = Field(description="encoder, layers, classes, training metrics and store manifest of the run")


class ModelsResponse(BaseModel):
    """The models this service holds (one run)."""

    models: list[ModelInfo]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class StrictQuery(BaseModel):
    """A route's query parameters: one it does not know (`formt=png`) is a 422, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model_id: str | None = Field(examples=["convnext_atto-3f2a9c"],
                                 description="null when the server was started without a run (evaluate only)")


_NON_EMPTY_MAP_SCHEMA: dict[str, Any] = {"type": "array", "minItems": 1,
                                         "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}
_NON_EMPTY_MAP: dict[str, Any] = {k: v for k, v in _NON_EMPTY_MAP_SCHEMA.items() if k != "type"}


class LabelArrays(BaseModel):
    """One label map as JSON arrays (small tiles): instance ids (0 = background) and optional class ids."""

    model_config = ConfigDict(extra="forbid")

    # an empty map is refused with the code `empty` by the route; the schema says so too
    instances: list[list[int]] = Field(description="(H, W) instance ids", examples=[[[0, 1, 1], [0, 1, 0], [2, 0, 0]]],
                                       json_schema_extra=_NON_EMPTY_MAP)
    classes: list[list[int]] | None = Field(None, description="(H, W) class per pixel, 0 = background",
                                            json_schema_extra={"anyOf": [_NON_EMPTY_MAP_SCHEMA, {"type": "null"}]})


class ImagePair(BaseModel):
    """Ground truth and prediction of one image."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="label for the image (default: its position)")
    tissue: str = Field("", max_length=200, description="tissue type, for PanNuke's per-tissue mPQ/bPQ")
    gt: LabelArrays
    pred: LabelArrays


class EvaluateArrays(BaseModel):
    """The JSON form of /v1/evaluate."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "images": [{"name": "a", "gt": {"instances": [[0, 1, 1], [0, 1, 0], [2, 0, 0]],
                                         "classes": [[0, 1, 1], [0, 1, 0], [2, 0, 0]]},
                    "pred": {"instances": [[0, 3, 3], [0, 3, 0], [0, 0, 0]],
                             "classes": [[0, 1, 1], [0, 1, 0], [0, 0, 0]]}}],
        "class_names": ["tumour", "immune"]}]})

    images: list[ImagePair] = Field(min_length=1)
    class_names: list[str] = Field(default_factory=list, description="class_names[k-1] names class id k")
