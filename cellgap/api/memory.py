"""Handing memory back to the system after a burst of large uploads.

A decoded upload can take tens of MB (a 4096x4096 PNG of 49 KB is 50 MB of pixels) and is freed once
its answer is sent, but glibc keeps freed blocks inside the heaps of the threads that decoded them,
so the server's resident memory would stay at the height of the burst. Once no request is in
progress and enough has been decoded since the last time, `MemoryReleaser` asks glibc to return the
free pages (`malloc_trim(0)`, in a worker thread: it takes a few milliseconds). Elsewhere than glibc
it does nothing. (`cellgap serve` also leaves glibc's own thresholds as they are: the CLI's
`--malloc keep`, which keeps freed memory for the next forward pass, is not applied to it.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

RELEASE_AFTER_BYTES = 64 * 1024 * 1024


def _glibc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class MemoryReleaser:
    """Counts the bytes decoded for requests; `release_if_due()` trims the heap once `threshold` were."""

    def __init__(self, threshold: int = RELEASE_AFTER_BYTES, trim: Callable[[], None] | None = None) -> None:
        self.threshold = threshold
        self._trim = trim if trim is not None else _glibc_trim()
        self._lock = threading.Lock()
        self._decoded = 0
        self.releases = 0

    def note(self, nbytes: int) -> None:
        """`nbytes` were allocated for a request (a decoded image or label map) and will be freed with it."""
        with self._lock:
            self._decoded += int(nbytes)

    def due(self) -> bool:
        with self._lock:
            return self._trim is not None and self._decoded >= self.threshold

    def release(self) -> None:
        with self._lock:
            self._decoded = 0
        if self._trim is not None:
            self._trim()
            self.releases += 1
            logger.debug("freed memory handed back to the system")


class MemoryReleaseMiddleware:
    """After the last request in progress ends, hand freed memory back if enough was decoded meanwhile."""

    def __init__(self, app: ASGIApp, releaser: MemoryReleaser) -> None:
        self.app, self.releaser = app, releaser
        self.in_progress = 0  # requests on the event loop: touched there only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
            if self.in_progress == 0 and self.releaser.due():
                await run_in_threadpool(self.releaser.release)
