"""Prometheus metrics of one app: request counts and latencies, tiles predicted, cells found.

Built on `prometheus_client` with one registry per app (created by the app factory, never the
process-wide default). Labels are bounded: a route is the template of one of the app's routes and a
method one HTTP defines; anything else is counted under `other`, so made-up paths or methods
cannot grow the exposition.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Metrics:
    """Everything /metrics shows; `gauge` values are read at render time (queue depth, model loaded)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("cellgap_http_requests", "HTTP requests answered, by route, method and status",
                                ("route", "method", "status"), registry=registry)
        self.latency = Histogram("cellgap_http_request_duration_seconds",
                                 "time from request start to the end of the answer", ("route", "method"),
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.images = Counter("cellgap_images_predicted", "images (tiles or larger) predicted", registry=registry)
        self.tiles = Counter("cellgap_tiles_predicted", "model tiles predicted (a large image counts its windows)",
                             registry=registry)
        self.cells = Counter("cellgap_cells_found", "nuclei found in predicted images", registry=registry)
        self.rejected = Counter("cellgap_requests_rejected", "predictions refused because the queue was full",
                                registry=registry)
        self.decoded = Counter("cellgap_uploads_decoded", "uploaded images decoded into pixels", registry=registry)
        self.batches = Histogram("cellgap_batch_size", "items per model call of the batcher", buckets=BATCH_BUCKETS,
                                 registry=registry)
        self.model_seconds = Counter("cellgap_model_busy_seconds", "time the model worker spent predicting",
                                     registry=registry)
        self._gauges: dict[str, Gauge] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when /metrics is rendered; a second service on the same app replaces the reader."""
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, help_text, registry=self.registry)
        self._gauges[name].set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP answer by route template (never the raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def labels(self, scope: Scope) -> tuple[str, str]:
        """(route template, method): `other` for a path outside the app or a method HTTP does not define."""
        route: str | None = getattr(scope.get("route"), "path", None)  # set by FastAPI for its API routes
        if route is None:  # plain Starlette routes such as /docs and /openapi.json
            matched = (r for r in self.routes if hasattr(r, "path") and r.matches(scope)[0] is not Match.NONE)
            route = str(getattr(next(matched, None), "path", OTHER))
        method = str(scope.get("method", ""))
        return route, method if method in HTTP_METHODS else OTHER

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route, method = self.labels(scope)
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
