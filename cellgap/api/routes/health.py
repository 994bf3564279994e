"""GET /healthz (the process answers) and GET /readyz (a model is loaded and its worker runs)."""
from __future__ import annotations

from fastapi import APIRouter, Request

from cellgap.api.deps import ready_service
from cellgap.api.routes.common import error_responses
from cellgap.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """Always 200 while the process serves requests."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=error_responses(503), summary="Readiness")
def readyz(request: Request) -> Readiness:
    """200 once the model is loaded and its worker runs, or at once for a server without a run (evaluate
    only, `model_id` null); 503 with the reason while loading or shutting down."""
    if request.app.state.no_model:
        return Readiness(status="ready", model_id=None)
    return Readiness(status="ready", model_id=ready_service(request).model_id)
