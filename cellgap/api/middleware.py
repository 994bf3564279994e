"""Checks made before or while a request's body is read: the API key, the body limit (a declared
Content-Length above it is refused at once, a longer stream mid-way) and the body's deadlines."""
from __future__ import annotations

import asyncio
import time

from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellgap.api.deps import API_KEY_HEADER, UNAUTHORIZED, key_matches
from cellgap.api.errors import error_response


class ApiKeyMiddleware:
    """Answer 401 to a /v1 request without the right key before any of its body is read: an unauthenticated
    client cannot make the server receive and parse a large upload."""

    def __init__(self, app: ASGIApp, api_key: SecretStr | None, prefix: str = "/v1") -> None:
        self.app, self.api_key, self.prefix = app, api_key, prefix
        self.header = API_KEY_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is not None and scope["type"] == "http" and scope["path"].startswith(self.prefix):
            given = next((v for k, v in scope.get("headers", []) if k == self.header), None)
            if not key_matches(given, self.api_key):
                response = error_response(401, "unauthorized", UNAUTHORIZED,
                                          {"WWW-Authenticate": API_KEY_HEADER, "Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BusyMiddleware:
    """503 busy with Retry-After before a prediction's body is read while the model's queue has no room for
    even one more tile: a burst is refused before its uploads are received, let alone decoded."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            service = getattr(scope["app"].state, "service", None)
            if service is not None and service.full:
                error = service.busy_error("request")
                response = error_response(503, error.code, str(error), {**error.headers, "Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyTooLargeError(HTTPException):
    """Raised from `receive` once the body passes the limit (an HTTPException, so every layer lets it through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await error_response(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
                return
            if length > self.max_bytes:
                response = error_response(413, "too_large", f"the request body ({length} bytes) is larger than the "
                                                            f"limit of {self.max_bytes} bytes", {"Connection": "close"})
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class BodyTimeoutError(HTTPException):
    """Raised from `receive` when a body is sent too slowly (408; the connection is closed after the answer)."""

    def __init__(self, detail: str) -> None:
        super().__init__(408, detail, headers={"Connection": "close"})


class BodyTimeoutMiddleware:
    """Deadlines for receiving a request's body: `read_timeout_s` for each piece, `body_timeout_s` for the
    whole body from the request's start. A client that trickles its upload (1 byte a second) gets a 408
    instead of holding a connection and a worker for as long as it likes."""

    def __init__(self, app: ASGIApp, read_timeout_s: float, body_timeout_s: float) -> None:
        self.app, self.read_timeout_s, self.body_timeout_s = app, read_timeout_s, body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_timeout_s
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # after the body: the wait for a disconnect has no deadline
                return await receive()
            left = deadline - time.monotonic()
            wait = min(self.read_timeout_s, left)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                if wait < self.read_timeout_s:
                    raise BodyTimeoutError(f"the request body was not received within {self.body_timeout_s:g} s"
                                           ) from None
                raise BodyTimeoutError(f"no part of the request body arrived for {self.read_timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)
