"""Helpers the routers share: reading uploads within the limits, the documented error answers."""
from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile  # FastAPI's UploadFile subclasses it; forms hold this one

from cellgap.api.errors import ErrorBody, InvalidInputError, TooLargeError
from cellgap.api.settings import Settings


def error_responses(*statuses: int, described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all share `ErrorBody`); `described` overrides
    the usual description of a status for this route."""
    text = {400: "malformed request", 401: "missing or wrong API key", 413: "body, file or image too large",
            415: "not an image or array the service reads", 422: "invalid content or missing field",
            501: "the server was started without a run (evaluate only)",
            503: "model not loaded or queue full (see Retry-After)", **(described or {})}
    return {status: {"model": ErrorBody, "description": text.get(status, "error")} for status in statuses}


def upload_name(upload: UploadFile) -> str:
    """A label for messages and answers: the client's file name, never used as a path."""
    return (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1][:200]


def describe_upload(upload: UploadFile, field: str) -> str:
    name = upload_name(upload)
    return f"upload {field!r}" + (f" ({name})" if name else "")


async def read_upload(upload: UploadFile, field: str, settings: Settings) -> bytes:
    """The file's bytes (the body limit already bounds them); empty files are refused."""
    data = await upload.read(settings.max_body_bytes + 1)
    if len(data) > settings.max_body_bytes:
        raise TooLargeError(f"{describe_upload(upload, field)}: more than {settings.max_body_bytes} bytes")
    if not data:
        raise InvalidInputError(f"{describe_upload(upload, field)}: the file is empty", code="empty")
    return data
