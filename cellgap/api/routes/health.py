"""GET /healthz (the process answers) and GET /readyz (a model is loaded and its worker runs)."""
from __future__ import annotations

from fastapi import APIRouter

from cellgap.api.deps import ServiceDep
from cellgap.api.routes.common import error_responses
from cellgap.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """Always 200 while the process serves requests."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=error_responses(503), summary="Readiness")
def readyz(service: ServiceDep) -> Readiness:
    """200 once the model is loaded and its worker runs; 503 (with the reason) before, or without a run."""
    return Readiness(status="ready", model_id=service.model_id)
