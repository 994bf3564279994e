"""A small dynamic batcher: requests from many threads or coroutines share one worker thread and its batches.

`submit(item, cost)` queues one item and returns a `concurrent.futures.Future`; the worker takes the
first waiting item, waits at most `max_wait_s` for more (never longer than it takes to fill
`max_batch`), and calls `run(batch)` once. A batch whose call fails is retried item by item, so one
bad item fails alone. The queue is bounded by the summed cost of the waiting items (e.g. their size
in tiles): a full queue raises `QueueFullError` at once, so a burst costs a quick refusal instead of
memory. An item costlier than the whole queue is taken when the queue is empty. Room can be reserved before
an item exists (`reserve(cost)`, e.g. from an image's header before it is decoded) and handed to
`submit`: a refusal then comes before the costly preparation, not after it.

With `wait="adaptive"` the worker waits only when company is likely: items were announced
(callers `announce()` them before their slow preparation, e.g. upload and decoding, and hand the
announcement to `submit`), or the previous batch had more than one item; and only while batching
pays: once the measured time per item of batches is not clearly below that of single items (as on
a CPU, where a batch of 8 costs about 8 single calls), the worker never idles to fill a batch and
only takes what is already queued. A lone client's request then runs at once, while concurrent
clients on a GPU still share full batches.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

logger = logging.getLogger(__name__)

X = TypeVar("X")
Y = TypeVar("Y")


class QueueFullError(RuntimeError):
    """The batcher's queue holds `max_queue` items already."""


class BatcherClosedError(RuntimeError):
    """The batcher is stopped (or stopping) and takes no more items."""


class Announcement:
    """Items a caller will submit soon; what is not submitted by the end of the `with` block is withdrawn."""

    def __init__(self, batcher: DynamicBatcher, count: int) -> None:
        self._batcher, self.left = batcher, count

    def __enter__(self) -> Announcement:
        return self

    def __exit__(self, *exc: object) -> None:
        self._batcher._withdraw(self)


class Reservation:
    """Queue room held for items still being prepared; each `submit` with it takes its cost out of it, and
    what is left is given back at the end of the `with` block."""

    def __init__(self, batcher: DynamicBatcher, cost: int) -> None:
        self._batcher, self.cost = batcher, cost

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        self._batcher._give_back(self)


@dataclass
class BatcherStats:
    """Totals since start: for monitoring and benchmarks."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0


_STOP = object()
PAYOFF = 0.8  # batching pays when an item of a batch costs at most this share of a single item's time
_EMA = 0.3


class DynamicBatcher(Generic[X, Y]):
    """Run `run(list[X]) -> list[Y]` (or an iterator of Y) on one worker thread over batches of concurrently
    submitted items."""

    def __init__(self, run: Callable[[list[X]], Iterable[Y]], *, max_batch: int = 8, max_wait_s: float = 0.004,
                 max_queue: int = 256, name: str = "batcher", wait: Literal["always", "adaptive"] = "always",
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.wait = wait
        self._incoming = 0  # announced items not yet submitted
        self._last_batch = 0
        self._seconds: dict[int, float] = {}  # moving average of a batch's duration by size (unit-cost items)
        self._run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._on_batch = on_batch
        self._queue: queue.Queue[tuple[X, Future[Y], int] | object] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # summed cost of the waiting items
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.stats = BatcherStats()

    def start(self) -> DynamicBatcher[X, Y]:
        self._thread.start()
        return self

    def __enter__(self) -> DynamicBatcher[X, Y]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def depth(self) -> int:
        """Items waiting (not yet taken by the worker)."""
        return self._queue.qsize()

    @property
    def pending_cost(self) -> int:
        """Summed cost of the waiting items."""
        with self._lock:
            return self._pending

    @property
    def full(self) -> bool:
        """Whether the queue (waiting and reserved items) has no room left for even the smallest item."""
        with self._lock:
            return self._pending >= self.max_queue

    @property
    def batching_pays(self) -> bool:
        """Whether batches were measured cheaper per item than single items (True until both are measured)."""
        single = self._seconds.get(1)
        per_item = [seconds / size for size, seconds in list(self._seconds.items()) if size > 1]
        return single is None or not per_item or min(per_item) <= PAYOFF * single

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._closed.is_set()

    def announce(self, count: int = 1) -> Announcement:
        """Tell the worker that `count` items are on their way (use as a `with` block)."""
        with self._lock:
            self._incoming += count
        return Announcement(self, count)

    def _withdraw(self, announcement: Announcement) -> None:
        with self._lock:
            self._incoming -= announcement.left
            announcement.left = 0

    def reserve(self, cost: int = 1) -> Reservation:
        """Hold room for an item of `cost` that is not ready yet; `QueueFullError` at once when there is none."""
        cost = max(int(cost), 1)
        with self._lock:
            if self._closed.is_set():
                raise BatcherClosedError("the batcher is closed")
            self._check_room(cost)
            self._pending += cost
        return Reservation(self, cost)

    def _give_back(self, reservation: Reservation) -> None:
        with self._lock:
            self._pending -= reservation.cost
            reservation.cost = 0

    def _check_room(self, cost: int) -> None:
        if self._pending and self._pending + cost > self.max_queue:
            raise QueueFullError(f"the queue is full ({self._pending} of {self.max_queue} waiting or reserved)")

    def submit(self, item: X, cost: int = 1, announcement: Announcement | None = None,
               reservation: Reservation | None = None) -> Future[Y]:
        """Queue one item (in the room of `reservation`, if given); its result (or exception) arrives on the
        returned future."""
        cost = max(int(cost), 1)
        future: Future[Y] = Future()
        with self._lock:  # closed check and put under the lock close() takes: no item lands after _STOP
            if self._closed.is_set():
                raise BatcherClosedError("the batcher is closed")
            share = 0
            if reservation is not None:  # the item takes its share of the reserved room (counted already)
                share = min(reservation.cost, cost)
                reservation.cost -= share
            if cost > share:
                self._check_room(cost - share)
            self._pending += cost - share
            if announcement is not None and announcement.left > 0:
                announcement.left -= 1
                self._incoming -= 1
            self._queue.put((item, future, cost))  # unbounded queue: never blocks
        return future

    def _release(self, cost: int) -> None:
        with self._lock:
            self._pending -= cost

    async def run(self, item: X, cost: int = 1, timeout_s: float | None = None,
                  announcement: Announcement | None = None, reservation: Reservation | None = None) -> Y:
        """Submit from a coroutine and await the result without blocking the event loop."""
        future = self.submit(item, cost, announcement, reservation)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in progress, fail every waiting item with `BatcherClosedError`, stop the thread."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self._queue.put(_STOP)  # unbounded queue: never blocks
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._fail_waiting()

    def _fail(self, entry: tuple[X, Future[Y], int] | object) -> None:
        if entry is not _STOP:
            _, future, cost = entry  # type: ignore[misc]
            self._release(cost)
            if future.set_running_or_notify_cancel():
                future.set_exception(BatcherClosedError("the service is shutting down"))

    def _fail_waiting(self) -> None:
        while True:
            try:
                self._fail(self._queue.get_nowait())
            except queue.Empty:
                return

    def _collect(self, first: tuple[X, Future[Y], int]) -> tuple[list[tuple[X, Future[Y], int]], bool]:
        """The first item plus whatever arrives within max_wait_s, up to max_batch; and whether to stop."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if self.wait == "adaptive" and self._queue.empty():
                if not self.batching_pays:
                    break  # waiting would only delay: run what is queued
                with self._lock:
                    if self._last_batch <= 1 and self._incoming <= 0:
                        break  # no sign of company: run now
            try:
                entry = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            batch.append(entry)  # type: ignore[arg-type]
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            entry = self._queue.get()
            if entry is _STOP or self._closed.is_set():
                self._fail(entry)
                break
            batch, stop = self._collect(entry)  # type: ignore[arg-type]
            for _, _, cost in batch:
                self._release(cost)
            self._last_batch = len(batch)
            live = [(item, future) for item, future, _ in batch if future.set_running_or_notify_cancel()]
            if live:
                elapsed = self._execute(live)
                if elapsed is not None and all(cost == 1 for _, _, cost in batch):
                    previous = self._seconds.get(len(live))
                    self._seconds[len(live)] = elapsed if previous is None else previous + _EMA * (elapsed - previous)
        self._fail_waiting()

    def _execute(self, batch: list[tuple[X, Future[Y]]]) -> float | None:
        """Run one batch; its duration, or None when it failed. Each caller gets its result as soon as the
        batch function produces it (it may return an iterator), not when the whole batch is done."""
        start = time.perf_counter()
        done = 0
        try:
            results = iter(self._run([item for item, _ in batch]))
            for (_, future), result in zip(batch, results):
                future.set_result(result)
                done += 1
            if done != len(batch) or next(results, _STOP) is not _STOP:
                raise RuntimeError(f"batch function returned {done if done < len(batch) else 'more'} results "
                                   f"for {len(batch)} items")
        except Exception as error:  # noqa: BLE001 - every failure goes to the waiting callers
            rest = batch[done:]
            if not rest:
                logger.warning("batch function failed after delivering every result: %s", error)
            elif len(rest) == 1:
                rest[0][1].set_exception(error)
            else:
                logger.debug("batch of %d failed (%s): retrying item by item", len(rest), error)
                for entry in rest:
                    self._execute([entry])
            return None
        elapsed = time.perf_counter() - start
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.busy_s += elapsed
        if self._on_batch is not None:
            self._on_batch(len(batch), elapsed)
        return elapsed
