"""GET /v1/models: the loaded run (encoder, layers, classes, training metrics, store manifest)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from cellgap.api.deps import ServiceDep, require_api_key
from cellgap.api.routes.common import error_responses
from cellgap.api.schemas import ModelInfo, ModelsResponse, StrictQuery

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", response_model=ModelsResponse, responses=error_responses(401, 501, 503), summary="The loaded run")
def models(service: ServiceDep, query: Annotated[StrictQuery, Query()]) -> ModelsResponse:
    """The one run this service holds, as its predictor describes it."""
    info = ModelInfo(model_id=service.model_id, tile_size=service.tile_size, class_names=list(service.class_names),
                     run=service.describe())
    return ModelsResponse(models=[info])
