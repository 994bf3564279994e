"""POST /v1/predict and /v1/predict/batch: nuclei of uploaded tiles or images, as cells, GeoJSON or an overlay."""
from __future__ import annotations

import asyncio
import logging
import math
from enum import StrEnum
from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from cellgap.api.deps import ServiceDep, SettingsDep, require_api_key
from cellgap.api.errors import TooLargeError
from cellgap.api.memory import MemoryReleaser
from cellgap.api.render import cells_response, geojson, overlay_png
from cellgap.api.routes.common import describe_upload, error_responses, read_upload, upload_name
from cellgap.api.schemas import BatchResponse, PredictResponse, StrictQuery
from cellgap.api.service import ModelService
from cellgap.api.settings import Settings
from cellgap.api.uploads import ACCEPTED, Limits, decode_image, probe_image
from cellgap.decoder.postprocess import Instances

log = logging.getLogger(__name__)
AnyPredictResponse = TypeVar("AnyPredictResponse", bound=PredictResponse)
router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_api_key)])


class OutputFormat(StrEnum):
    json = "json"
    geojson = "geojson"
    png = "png"


class BatchQuery(StrictQuery):
    overlay: bool = Field(False, description="add each overlay as a base64 PNG")
    min_score: float = Field(0.0, ge=0, le=1, description="leave out cells whose detection score is below this")


class PredictQuery(BatchQuery):
    format: OutputFormat = Field(OutputFormat.json, description="json: cells; geojson: QuPath FeatureCollection; "
                                                                "png: overlay image")
    overlay: bool = Field(False, description="json only: add the overlay as a base64 PNG")


_FILE_HELP = f"a tile or image: {ACCEPTED} (an (H,W,3) / (H,W) array for .npy); larger than a tile = sliding windows"
GEOJSON_EXAMPLE = {"type": "FeatureCollection", "features": [{
    "type": "Feature", "id": "0c5b8c7e-6b0a-5d57-9f0e-3d2f3b8f1a11",
    "geometry": {"type": "Polygon", "coordinates": [[[31.0, 7.0], [44.0, 7.0], [44.0, 19.0], [31.0, 19.0], [31.0, 7.0]]]},
    "properties": {"objectType": "detection", "classification": {"name": "inflammatory", "color": [86, 180, 233]},
                   "measurements": {"score": 0.93, "class_confidence": 0.88, "area": 118.0}, "isLocked": False}}]}
_PREDICT_RESPONSES = {
    200: {"description": "cells (json), a QuPath FeatureCollection (geojson) or the overlay image (png)",
          "content": {"application/geo+json": {"schema": {"type": "object"}, "example": GEOJSON_EXAMPLE},
                      "image/png": {"schema": {"type": "string", "format": "binary"}}}},
    **error_responses(400, 401, 413, 415, 422, 501, 503),
}


def limits_of(settings: Settings, service: ModelService) -> Limits:
    return Limits(max_pixels=settings.max_image_pixels, min_side=service.tile_size)


def json_answer(model: PredictResponse | BatchResponse) -> Response:
    """The model serialised by pydantic-core in one call; FastAPI's generic encoder took 4 ms per tile (30 times
    as long) on the event loop, time that the model thread waits for the interpreter lock."""
    return Response(model.model_dump_json(), media_type="application/json")


def finite_scores(response: AnyPredictResponse) -> AnyPredictResponse:
    """A non-finite score or confidence (a damaged model output) is sent as null, never as a made-up
    number: strict JSON has no NaN, and 0 would read as a confident 'no'."""
    broken = 0
    for cell in response.cells:
        for field in ("score", "class_confidence"):
            value = getattr(cell, field)
            if value is not None and not math.isfinite(value):
                setattr(cell, field, None)
                broken += 1
    if broken:
        log.warning("%s: %d non-finite cell scores or confidences, sent as null", response.name, broken)
    return response


class _Probed:
    """An upload read and checked from its header; not decoded yet."""

    def __init__(self, data: bytes, what: str, height: int, width: int) -> None:
        self.data, self.what, self.height, self.width = data, what, height, width
        self.pixels = height * width


async def _probe(upload: UploadFile, field: str, service: ModelService, settings: Settings) -> _Probed:
    """Read one upload and check it from its header (format, channels, size): everything that can refuse it
    before its pixels are decoded, except the queue's room (`ModelService.reserve`)."""
    data = await read_upload(upload, field, settings)
    what = describe_upload(upload, field)
    height, width = await run_in_threadpool(probe_image, data, limits_of(settings, service), what)
    return _Probed(data, what, height, width)


async def _decode(admitted: _Probed, service: ModelService, settings: Settings,
                  memory: MemoryReleaser) -> np.ndarray:
    async with service.decode_slot():  # at most max_decoding images decoded at once
        image = await run_in_threadpool(decode_image, admitted.data, limits_of(settings, service), admitted.what)
    service.metrics.decoded.inc()
    memory.note(image.nbytes + len(admitted.data))
    return image


async def _cells(image: np.ndarray, instances: Instances, name: str, service: ModelService,
                 with_overlay: bool) -> PredictResponse:
    result = await run_in_threadpool(
        lambda: cells_response(image, instances, class_names=service.class_names, model_id=service.model_id,
                               tile_size=service.tile_size, name=name, with_overlay=with_overlay))
    return finite_scores(result)


@router.post("/predict", response_model=PredictResponse, responses=_PREDICT_RESPONSES,
             summary="Nuclei of one tile or image")
async def predict(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=_FILE_HELP)],
    query: Annotated[PredictQuery, Query()],
) -> Response | PredictResponse:
    """Segment and classify the nuclei of one uploaded image.

    Tiles of the model's size are batched with concurrent requests; larger images go through
    overlapping sliding windows, smaller ones are padded.
    """
    with service.announce() as announcement:
        probed = await _probe(file, "file", service, settings)
        with service.reserve([(probed.height, probed.width)], probed.what) as room:  # 503 busy: not decoded
            image = await _decode(probed, service, settings, request.app.state.memory)
            instances = (await service.predict(image, announcement, room)).with_min_score(query.min_score)
    name, format = upload_name(file), query.format
    if format is OutputFormat.png:
        return Response(await run_in_threadpool(overlay_png, image, instances, service.class_names),
                        media_type="image/png")
    if format is OutputFormat.geojson:
        content = await run_in_threadpool(geojson, instances, service.class_names, name)
        return JSONResponse(content, media_type="application/geo+json")
    return json_answer(await _cells(image, instances, name, service, query.overlay))


@router.post("/predict/batch", response_model=BatchResponse, responses=error_responses(400, 401, 413, 415, 422, 501, 503),
             summary="Nuclei of several tiles in one request")
async def predict_batch(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description=f"one or more tiles or images ({ACCEPTED})")],
    query: Annotated[BatchQuery, Query()],
) -> Response:
    """Segment several images; their tiles share model batches. Results come back in upload order."""
    if len(files) > settings.max_files:
        raise TooLargeError(f"{len(files)} files in one request; at most {settings.max_files}", code="too_many_files")
    images: list[np.ndarray] = []
    with service.announce(len(files)) as announcement:
        probed: list[_Probed] = []
        pixels = 0
        for upload in files:  # all checked from their headers before any is decoded
            probed.append(await _probe(upload, "files", service, settings))
            pixels += probed[-1].pixels
            if pixels > settings.max_image_pixels:
                raise TooLargeError(f"the images of one batch may hold {settings.max_image_pixels} pixels together; "
                                    f"these reach {pixels} at file {len(probed)}", code="image_too_large")
        # one room for the whole request (503 busy before any is decoded), which each image takes its share of
        with service.reserve([(p.height, p.width) for p in probed], "request") as room:
            for entry in probed:  # all decoded before any is queued
                images.append(await _decode(entry, service, settings, request.app.state.memory))
            predicted = await asyncio.gather(*(service.predict(image, announcement, room) for image in images),
                                             return_exceptions=True)
    for outcome in predicted:
        if isinstance(outcome, BaseException):
            raise outcome
    results = [await _cells(image, instances.with_min_score(query.min_score), upload_name(upload),  # type: ignore[union-attr]
                            service, query.overlay)
               for upload, image, instances in zip(files, images, predicted)]
    return json_answer(BatchResponse(model_id=service.model_id, results=results))
