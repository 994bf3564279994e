"""GET /metrics: Prometheus text exposition of the app's counters and histograms."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from cellgap.api.deps import MetricsDep
from cellgap.api.metrics import CONTENT_TYPE

router = APIRouter(tags=["monitoring"])

_EXAMPLE = ('# HELP cellgap_tiles_predicted_total model tiles predicted\n# TYPE cellgap_tiles_predicted_total counter\n'
            'cellgap_tiles_predicted_total 42\n')


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}, "example": _EXAMPLE}}}})
def metrics(registry: MetricsDep) -> PlainTextResponse:
    """Requests and latencies by route and status, images/tiles predicted, cells found, queue depth."""
    return PlainTextResponse(registry.render(), media_type=CONTENT_TYPE)
