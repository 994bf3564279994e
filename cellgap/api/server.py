"""The uvicorn server of `cellgap serve`: its limits for slow or numerous clients, from the settings.

uvicorn closes idle keep-alive connections (`keep_alive_s`), refuses connections beyond
`limit_concurrency` with 503 (`max_connections`) and bounds the request line and headers
(`max_header_bytes`), but it has no deadline for the headers themselves: a client that sends one
header line every few seconds keeps its connection forever. `HeaderTimeoutProtocol` adds one
(`header_timeout_s`); the body's deadlines are the app's (`middleware.BodyTimeoutMiddleware`), so
they hold under any ASGI server.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cellgap.api.settings import Settings

logger = logging.getLogger(__name__)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers: from the connection's first byte (or
    the first byte after the previous answer) to the end of the headers. The connection is closed after it."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            logger.info("closing a connection from %s: no complete request headers within %g s", client,
                        self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers():
            self._arm_header_timer()
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle or not self._waiting_for_headers():  # a request's headers arrived
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def protocol_class(settings: Settings) -> type[HeaderTimeoutProtocol]:
    """The protocol with this server's header deadline (uvicorn builds one protocol object per connection)."""
    return type("CellgapH11Protocol", (HeaderTimeoutProtocol,), {"header_timeout_s": settings.header_timeout_s})


def uvicorn_config(app: Any, settings: Settings, *, host: str, port: int, log_level: str | None = None,
                   access_log: bool | None = None) -> uvicorn.Config:
    """uvicorn's configuration for `app` with the connection limits of `settings`."""
    return uvicorn.Config(
        app, host=host, port=port, http=protocol_class(settings),
        log_level=log_level or settings.log_level,
        access_log=settings.access_log if access_log is None else access_log,
        timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes, timeout_graceful_shutdown=10)
