"""The app factory: settings in, a FastAPI app out; the model loads in the lifespan, nothing at import time.

Run it with `cellgap serve --run RUN_DIR`, or `uvicorn --factory cellgap.api.app:create_app` with the
settings in `CELLGAP_*` environment variables.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from cellgap.api.errors import NoModelError, ServiceUnavailableError, install_error_handlers
from cellgap.api.memory import MemoryReleaseMiddleware, MemoryReleaser
from cellgap.api.metrics import Metrics, MetricsMiddleware
from cellgap.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, BodyTimeoutMiddleware, BusyMiddleware
from cellgap.api.routes import evaluate, health, metrics, models, predict, region
from cellgap.api.schemas import EvaluateArrays
from cellgap.api.service import ModelService, PredictorFactory, load_predictor
from cellgap.api.settings import Settings, get_settings
from cellgap.core.version import cellgap_version

logger = logging.getLogger(__name__)
PREDICT_PATHS = ("/v1/predict", "/v1/predict/batch", "/v1/predict/region")

DESCRIPTION = """Nucleus segmentation and classification of histopathology tiles with a frozen foundation-model
encoder and a CISCA-style decoder, and the metrics of `cellgap evaluate`.

When the server sets `CELLGAP_API_KEY`, every `/v1` route needs it in the `X-API-Key` header.
Errors are JSON: `{"error": "<code>", "detail": "<what is wrong>"}`."""


def create_app(settings: Settings | None = None, *, predictor_factory: PredictorFactory = load_predictor) -> FastAPI:
    """A new app; `predictor_factory(settings)` runs once at startup (tests pass a fake one)."""
    settings = settings or get_settings()
    registry = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            predictor = await run_in_threadpool(predictor_factory, settings)
        except NoModelError as error:  # no run configured: evaluate and health work, predict answers 501
            logger.warning("%s", error)
            app.state.no_model = True
        except ServiceUnavailableError as error:
            logger.warning("%s; /v1/predict and /v1/models answer 503", error)
            app.state.not_ready_reason = str(error)
        else:
            app.state.service = ModelService(predictor, settings, registry).start()
            logger.info("serving model %s (tile %d px, %d classes)", app.state.service.model_id,
                        app.state.service.tile_size, len(app.state.service.class_names))
        try:
            yield
        finally:
            service, app.state.service = app.state.service, None
            app.state.not_ready_reason = "the service is shutting down"
            if service is not None:
                await run_in_threadpool(service.close)

    # Swagger UI from packaged assets, not a CDN: /docs works on a network without internet
    app = FastAPIOffline(docs_url="/docs" if settings.docs else None, redoc_url=None, static_url="/docs-assets",
                         title="cellgap", version=cellgap_version(), description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.no_model = False
    app.state.metrics = registry
    app.state.service = None
    app.state.not_ready_reason = "the model is still loading"
    app.state.memory = MemoryReleaser()
    install_error_handlers(app)
    for module in (health, metrics, models, predict, region, evaluate):
        app.include_router(module.router)
    # the last added runs first: metrics, API key, memory release, refusal when busy, then the body's limits
    app.add_middleware(BodyTimeoutMiddleware, read_timeout_s=settings.read_timeout_s,
                       body_timeout_s=settings.body_timeout_s)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BusyMiddleware, paths=PREDICT_PATHS)  # its 503 carries the service's Retry-After
    app.add_middleware(MemoryReleaseMiddleware, releaser=app.state.memory)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)  # runs before the body limit and the body
    app.add_middleware(MetricsMiddleware, metrics=registry, routes=app.routes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the JSON body of /v1/evaluate (declared by hand, the route reads two body types)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    extra = EvaluateArrays.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in extra.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components["EvaluateArrays"] = extra
    body = schema["paths"]["/v1/evaluate"]["post"]["requestBody"]["content"]
    example = EvaluateArrays.model_validate(EvaluateArrays.model_json_schema()["examples"][0])
    body["application/json"]["example"] = example.model_dump(exclude_none=True)
    answer = schema["paths"]["/v1/evaluate"]["post"]["responses"]["200"].setdefault("content", {})
    answer.setdefault("application/json", {})["example"] = _evaluate_example(example)
    _declare_refusals(schema)
    app.openapi_schema = schema
    return schema


def _declare_refusals(schema: dict[str, Any]) -> None:
    """What the routes refuse as invalid (422), said in the schema too: empty files and empty file lists (a
    client generated from the schema sends neither). Limits (413: `max_files`, the body and pixel limits)
    are the server's settings and stay out of the schema, as a 413 is not a schema violation."""
    def files(entry: dict[str, Any]) -> None:
        entry["minItems"] = 1
        entry["items"]["minLength"] = 1

    def body(path: str) -> dict[str, Any]:
        content = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        if "$ref" in content:
            return schema["components"]["schemas"][content["$ref"].rsplit("/", 1)[-1]]
        return content

    body("/v1/predict")["properties"]["file"]["minLength"] = 1
    files(body("/v1/predict/batch")["properties"]["files"])
    evaluate = copy.deepcopy(body("/v1/evaluate"))  # the route's module-level schema stays as it is
    for field in ("gt", "pred"):
        files(evaluate["properties"][field])
    schema["paths"]["/v1/evaluate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"] = evaluate


def _evaluate_example(example: EvaluateArrays) -> dict[str, Any]:
    """The real answer to the documented request (tiny arrays: computed when the schema is first asked for)."""
    pairs, class_names = evaluate.pairs_from_json(example, Settings.model_construct())  # defaults, not the env
    return evaluate.score(pairs, class_names=class_names, n_classes=None, radius=12.0, match_iou=0.5).to_json_dict()
