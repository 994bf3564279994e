"""Errors of the service and the one place that maps every error to a JSON answer with a 4xx/5xx status.

Body of every error answer: `{"error": "<code>", "detail": "<what is wrong>"}` (validation errors
add `errors`, one entry per bad field). User input never yields a 500: domain errors
(`CellgapError`) become 4xx here; anything else is a bug, logged with its traceback.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from cellgap.core.errors import CellgapError
from cellgap.decoder.errors import DecoderError
from cellgap.featurestore.errors import DatasetError
from cellgap.metrics.errors import EvaluationError

logger = logging.getLogger(__name__)


class ApiError(CellgapError):
    """Root of the service's errors: an HTTP status, a short machine-readable code and a message."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code or type(self).code
        self.headers = headers or {}


class InvalidInputError(ApiError, ValueError):
    """The request is well-formed but its content cannot be used (dtype, channels, NaN, shapes, ...)."""

    status, code = 422, "invalid_input"


class UnsupportedMediaError(ApiError, ValueError):
    """An upload is not an image (or not a .npy array) that the service reads."""

    status, code = 415, "not_an_image"


class TooLargeError(ApiError, ValueError):
    """A body, a file or an image exceeds the configured limits."""

    status, code = 413, "too_large"


class UnauthorizedError(ApiError, PermissionError):
    """The API key is missing or wrong."""

    status, code = 401, "unauthorized"


class ServiceUnavailableError(ApiError, RuntimeError):
    """The service cannot answer now (model not loaded, queue full, shutting down): retry later."""

    status, code = 503, "unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class ForbiddenError(ApiError, PermissionError):
    """The request names something the server will not open for anyone (a path outside the slides root)."""

    status, code = 403, "forbidden"


class NotFoundError(ApiError, LookupError):
    """The request names something that does not exist (a slide under the slides root)."""

    status, code = 404, "not_found"


class NotEnabledError(ApiError, LookupError):
    """A route this server was configured without (no slides root): permanent, so 501 and no Retry-After."""

    status, code = 501, "not_enabled"


class NoModelError(ApiError, LookupError):
    """This server was started without a run: a permanent condition, so 501 and no Retry-After."""

    status, code = 501, "no_model"


class FieldError(BaseModel):
    """One invalid request field."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """What every error answer holds."""

    error: str
    detail: str
    errors: list[FieldError] | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "not_an_image", "detail": "upload 'file' (a.txt): not a PNG, JPEG, TIFF or .npy file"}]})


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 408: "timeout", 413: "too_large", 415: "unsupported_media_type",
                 422: "invalid_input", 429: "too_many_requests", 501: "no_model", 503: "unavailable"}


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
                   errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorBody(error=code, detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(error: CellgapError) -> tuple[int, str]:
    """HTTP status and code of a domain error."""
    if isinstance(error, ApiError):
        return error.status, error.code
    if isinstance(error, EvaluationError):
        return 422, "invalid_labels"
    if isinstance(error, DatasetError):
        return 422, "invalid_input"
    if isinstance(error, DecoderError):
        return 422, "cannot_predict"
    return 422, "invalid_input"


def _location(loc: tuple[Any, ...]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    """Field errors without the offending input (it can be a whole uploaded file)."""
    return [{"loc": _location(tuple(e.get("loc", ()))), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in error.errors()][:20]


def _describe(errors: list[dict[str, Any]]) -> str:
    """One line naming the first few bad fields, e.g. "missing field 'file': Field required"."""
    parts = []
    for error in errors[:3]:
        where = ".".join(str(part) for part in error["loc"] if part not in ("body", "query", "header"))
        kind = "missing field" if error["type"] == "missing" else "invalid field"
        parts.append(f"{kind} {where!r}: {error['msg']}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more if parts else "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping of every error kind to a JSON answer."""

    @app.exception_handler(CellgapError)
    async def _domain(request: Request, error: CellgapError) -> JSONResponse:
        status, code = status_of(error)
        headers = error.headers if isinstance(error, ApiError) else None
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, error)
        return error_response(status, code, str(error), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(error)
        missing = any(e["type"] == "missing" for e in errors)
        return error_response(422, "missing_field" if missing else "invalid_request", _describe(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "error")
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        return error_response(error.status_code, code, detail, dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error (logged on the server)")
