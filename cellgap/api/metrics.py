"""Prometheus text-format metrics of one app: request counts and latencies, tiles predicted, cells found.

A small thread-safe registry (no client library): counters and histograms keyed by label values,
rendered in the text exposition format 0.0.4. One instance per app, created by the app factory.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self._values: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self._lock:
            self._values[labels] += amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        lines += [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts = self._counts.setdefault(labels, [0] * (len(self.buckets) + 1))
            counts[index] += 1
            self._sums[labels] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(labels, ()))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v), self._sums[k]) for k, v in self._counts.items())
        for key, counts, total in items:
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                bucket = _labels(self.label_names, key, 'le="' + le + '"')
                lines.append(f"{self.name}_bucket{bucket} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {repr(float(total))}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Metrics:
    """Everything /metrics shows; `gauges` are read at render time (queue depth, model loaded)."""

    def __init__(self) -> None:
        self.requests = Counter("cellgap_http_requests_total", "HTTP requests answered, by route, method and status",
                                ("route", "method", "status"))
        self.latency = Histogram("cellgap_http_request_duration_seconds",
                                 "time from request start to the end of the answer", ("route", "method"))
        self.images = Counter("cellgap_images_predicted_total", "images (tiles or larger) predicted")
        self.tiles = Counter("cellgap_tiles_predicted_total", "model tiles predicted (a large image counts its windows)")
        self.cells = Counter("cellgap_cells_found_total", "nuclei found in predicted images")
        self.rejected = Counter("cellgap_requests_rejected_total", "predictions refused because the queue was full")
        self.batches = Histogram("cellgap_batch_size", "items per model call of the batcher", (), BATCH_BUCKETS)
        self.model_seconds = Counter("cellgap_model_busy_seconds_total", "time the model worker spent predicting")
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.images, self.tiles, self.cells, self.rejected, self.batches,
                       self.model_seconds):
            lines += metric.render()
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(read())}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP answer by route template (not raw path: no label explosion) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

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
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.inc(1, route, method, str(status))
            self.metrics.latency.observe(time.perf_counter() - start, route, method)
