"""Request dependencies as named `Annotated` aliases: settings, the loaded model, the API key check."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from cellgap.api.errors import NoModelError, ServiceUnavailableError, UnauthorizedError
from cellgap.api.metrics import Metrics
from cellgap.api.service import NO_MODEL, ModelService
from cellgap.api.settings import Settings

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="needed on every /v1 route when the server sets CELLGAP_API_KEY")


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def metrics_of(request: Request) -> Metrics:
    return request.app.state.metrics


def ready_service(request: Request) -> ModelService:
    """The loaded model; 501 when the server has no run, 503 while none is loaded (loading, shutting down)."""
    service: ModelService | None = request.app.state.service
    settings: Settings = request.app.state.settings
    if request.app.state.no_model:
        raise NoModelError(NO_MODEL)
    if service is None or not service.ready:
        reason = request.app.state.not_ready_reason or "the model is not loaded"
        raise ServiceUnavailableError(reason, code="not_ready", retry_after_s=settings.retry_after_s)
    return service


SettingsDep = Annotated[Settings, Depends(settings_of)]
MetricsDep = Annotated[Metrics, Depends(metrics_of)]
ServiceDep = Annotated[ModelService, Depends(ready_service)]


UNAUTHORIZED = "missing or wrong API key (send it in the X-API-Key header)"


def key_matches(given: str | bytes | None, expected: SecretStr) -> bool:
    """The sent key against the configured one, in constant time."""
    sent = given.encode() if isinstance(given, str) else (given or b"")
    return hmac.compare_digest(sent, expected.get_secret_value().encode())


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """When an API key is configured, the request must carry it (also checked by `ApiKeyMiddleware` before
    the body is read; declared here so that the OpenAPI document shows the key)."""
    if settings.api_key is not None and not key_matches(key, settings.api_key):
        raise UnauthorizedError(UNAUTHORIZED, headers={"WWW-Authenticate": API_KEY_HEADER})
