"""POST /v1/predict/region: nuclei of a region of a slide on the server, in level-0 slide pixels."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from cellgap.api.deps import ServiceDep, SettingsDep, require_api_key
from cellgap.api.render import overlay_png, region_geojson, region_response
from cellgap.api.routes.common import error_responses
from cellgap.api.routes.predict import (
    GEOJSON_EXAMPLE,
    OutputFormat,
    PredictQuery,
    finite_scores,
    json_answer,
    limits_of,
)
from cellgap.api.schemas import RegionRequest, RegionResponse
from cellgap.api.slides import open_region_slide, plan_region, slide_path, slides_root

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_api_key)])

_RESPONSES = {
    200: {"description": "cells (json), a QuPath FeatureCollection (geojson), both in level-0 slide pixels, or the "
                         "overlay of the region as read at the model's pixel size (png)",
          "content": {"application/geo+json": {"schema": {"type": "object"}, "example": GEOJSON_EXAMPLE},
                      "image/png": {"schema": {"type": "string", "format": "binary"}}}},
    **error_responses(400, 401, 403, 404, 413, 415, 422, 501, 503, described={
        403: "the slide's path leads outside the slides root",
        404: "no such slide under the slides root",
        413: "the region is larger than the pixel limit",
        415: "not a slide file OpenSlide or tifffile reads",
        422: "invalid path, region outside the slide, slide without a pixel size, or an invalid field",
        501: "the server has no slides root, or was started without a run"}),
}


@router.post("/predict/region", response_model=RegionResponse, responses=_RESPONSES,
             summary="Nuclei of a region of a slide on the server")
async def predict_region(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    region: Annotated[RegionRequest, Body()],
    query: Annotated[PredictQuery, Query()],
) -> Response | RegionResponse:
    """Segment and classify the nuclei of a region of a slide under the server's slides root.

    The region (level-0 pixels) is read at the model's pixel size, resampled when the slide's differs,
    and predicted as an uploaded image of that size would be, through the same queue and batches.
    Cells come back in level-0 slide pixels, so they overlay the slide as they are.
    """
    root = slides_root(settings.slides_root)
    name = region.slide
    with service.announce() as announcement, ExitStack() as held:
        path = await run_in_threadpool(slide_path, root, name)  # touches the disk: never on the event loop
        async with service.decode_slot():  # at most max_decoding slides open and read at once
            slide = await run_in_threadpool(open_region_slide, path, name, region.mpp)
            try:
                plan = plan_region(slide, name, (region.x, region.y, region.width, region.height), service.mpp,
                                   limits_of(settings, service))  # 413 / 422 from the header: nothing read yet
                room = held.enter_context(service.reserve([(plan.read_height, plan.read_width)],
                                                          f"slide {name[:200]!r}"))  # 503 busy: not read
                image = await run_in_threadpool(plan.read, slide)
            finally:
                await run_in_threadpool(slide.close)
        request.app.state.memory.note(image.nbytes)
        instances = (await service.predict(image, announcement, room)).with_min_score(query.min_score)
    if query.format is OutputFormat.png:
        return Response(await run_in_threadpool(overlay_png, image, instances, service.class_names),
                        media_type="image/png")
    if query.format is OutputFormat.geojson:
        content = await run_in_threadpool(region_geojson, instances, plan, service.class_names, name)
        return JSONResponse(content, media_type="application/geo+json")
    answer = await run_in_threadpool(
        lambda: region_response(image, instances, plan, class_names=service.class_names, model_id=service.model_id,
                                tile_size=service.tile_size, name=name, with_overlay=query.overlay))
    return json_answer(finite_scores(answer))
