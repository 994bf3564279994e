"""Seconds spent per stage of a pipeline, summed over the threads that run them, for benchmarks' shares."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class StageClock:
    """Accumulates wall seconds per named stage; safe to use from several threads at once."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._seconds[stage] = self._seconds.get(stage, 0.0) + elapsed

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)


@contextlib.contextmanager
def measured(clock: StageClock | None, stage: str) -> Iterator[None]:
    """`clock.measure(stage)`, or nothing when no clock is kept."""
    if clock is None:
        yield
    else:
        with clock.measure(stage):
            yield
