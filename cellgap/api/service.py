"""The loaded model behind the routes: one predictor, one worker thread and its dynamic batcher.

Tiles of exactly the model's tile size are batched together in one `predict_batch` call; other
images (smaller: padded, larger: sliding windows) go through `predict_image` on the same worker
thread, so only one thread ever touches the model.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import numpy as np

from cellgap.api.batcher import Announcement, BatcherClosedError, DynamicBatcher, QueueFullError, Reservation
from cellgap.api.errors import NoModelError, ServiceUnavailableError
from cellgap.api.metrics import Metrics
from cellgap.api.settings import Settings
from cellgap.core.tiling import tile_origins
from cellgap.decoder.postprocess import Instances

logger = logging.getLogger(__name__)


class PredictorLike(Protocol):
    """What the service needs of `decoder.predictor.Predictor`."""

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def tile_size(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    @property
    def mpp(self) -> float: ...

    def describe(self) -> dict[str, Any]: ...

    def predict_batch(self, images: list[np.ndarray]) -> list[Instances]: ...

    def iter_batch(self, images: list[np.ndarray]) -> Iterator[Instances]: ...

    def predict_image(self, image: np.ndarray, batch_size: int = 8) -> Instances: ...


PredictorFactory = Callable[[Settings], PredictorLike]
NO_MODEL = "this server was started without a run (CELLGAP_RUN_DIR or --run): it answers /v1/evaluate only"


def load_predictor(settings: Settings) -> PredictorLike:
    """The run named by the settings (imports torch: call it at startup, never at import time)."""
    if settings.run_dir is None:
        raise NoModelError(NO_MODEL)
    import torch

    from cellgap.decoder.predictor import Predictor

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)  # the process serves one model: its thread count is the process's
    return Predictor.from_run(settings.run_dir, device=settings.device)


def window_count(height: int, width: int, tile: int) -> int:
    """Model tiles an image costs: 1 up to the tile size (padded), else the predictor's half-tile sliding windows."""
    if height <= tile and width <= tile:
        return 1
    return len(tile_origins(max(height, tile), max(width, tile), tile, stride=max(1, tile // 2)))


class ModelService:
    """A predictor, its batcher and the counters of what it predicted."""

    def __init__(self, predictor: PredictorLike, settings: Settings, metrics: Metrics) -> None:
        self.predictor, self.settings, self.metrics = predictor, settings, metrics
        self.class_names = tuple(predictor.class_names)
        self.tile_size = int(predictor.tile_size)
        self.model_id = str(predictor.model_id)
        self.mpp = float(predictor.mpp)  # microns per pixel the model sees: slide regions are read at it
        self._description: dict[str, Any] | None = None
        self._decode_slots = asyncio.Semaphore(settings.max_decoding)
        self.batcher: DynamicBatcher[np.ndarray, Instances] = DynamicBatcher(
            self._run, max_batch=settings.batch_size, max_wait_s=settings.batch_wait_ms / 1000.0,
            max_queue=settings.queue_size, name="cellgap-model", wait="adaptive",
            on_batch=self._count_batch)
        metrics.gauge("cellgap_queue_depth", "images waiting for the model", lambda: self.batcher.depth)
        metrics.gauge("cellgap_model_loaded", "1 when a model is loaded and serving", lambda: float(self.ready))

    def _count_batch(self, size: int, seconds: float) -> None:
        self.metrics.batches.observe(size)
        self.metrics.model_seconds.inc(seconds)

    def describe(self) -> dict[str, Any]:
        """The predictor's description, computed once, with NaN/inf as None (strict JSON) and every path on the
        server (the run folder, the data set the store was made from) cut to its last part."""
        if self._description is None:
            self._description = _strict_json(_without_paths(self.predictor.describe()))
        return self._description

    @property
    def ready(self) -> bool:
        return self.batcher.running

    def start(self) -> ModelService:
        self.batcher.start()
        return self

    def close(self) -> None:
        self.batcher.close()

    def _run(self, images: list[np.ndarray]) -> Iterable[Instances]:
        """The worker thread's call: one batched forward pass for whole tiles, one call per other image.
        A batch of tiles only (the usual case) hands each tile's cells on as soon as they are post-processed."""
        tiles = [i for i, image in enumerate(images) if image.shape[:2] == (self.tile_size, self.tile_size)]
        if len(tiles) == len(images):
            return self.predictor.iter_batch(images)
        results: list[Instances | None] = [None] * len(images)
        if tiles:
            for i, instances in zip(tiles, self.predictor.predict_batch([images[i] for i in tiles])):
                results[i] = instances
        for i, image in enumerate(images):
            if results[i] is None:
                results[i] = self.predictor.predict_image(image, batch_size=self.settings.batch_size)
        return results  # type: ignore[return-value]

    def cost(self, image: np.ndarray) -> int:
        """Queue cost of an image: its area in tiles (at least 1), so the queue bounds memory, not requests."""
        height, width = image.shape[:2]
        return self.cost_of(height, width)

    def cost_of(self, height: int, width: int) -> int:
        return max(1, math.ceil(height * width / self.tile_size**2))

    @property
    def full(self) -> bool:
        """No room in the queue for one more image (waiting and admitted images fill it)."""
        return self.batcher.full

    def busy_error(self, what: str) -> ServiceUnavailableError:
        self.metrics.rejected.inc()
        return ServiceUnavailableError(f"{what}: the prediction queue is full (room for {self.settings.queue_size} "
                                       "tiles, counting uploads admitted and not yet decoded): retry later",
                                       code="busy", retry_after_s=self.settings.retry_after_s)

    def reserve(self, sizes: Iterable[tuple[int, int]], what: str = "upload") -> Reservation:
        """Room in the queue for images of these (height, width), read from their headers before they are
        decoded: a burst is refused (503 busy) before its pixels are, and what is admitted is bounded by the
        queue. One room for all the images of a request (each `predict` takes its share), so a request
        costlier than the whole queue is still taken when the queue is empty."""
        try:
            return self.batcher.reserve(sum(self.cost_of(height, width) for height, width in sizes))
        except QueueFullError:
            raise self.busy_error(what) from None
        except BatcherClosedError:
            raise ServiceUnavailableError("the service is shutting down", code="shutting_down",
                                          retry_after_s=self.settings.retry_after_s) from None

    @asynccontextmanager
    async def decode_slot(self) -> AsyncIterator[None]:
        """Room to decode one upload: a decoded image can take hundreds of MB (a 4096x4096 PNG of 49 KB
        is 50 MB of pixels, more while it is converted), so at most `max_decoding` are decoded at a time
        and the others wait their turn holding only their compressed bytes. Only uploads with room
        reserved in the queue (`reserve`) wait here, so the queue's size bounds the waiting too."""
        async with self._decode_slots:
            yield

    def announce(self, count: int = 1) -> Announcement:
        """Tell the batcher that `count` images are being uploaded and decoded (a `with` block)."""
        return self.batcher.announce(count)

    async def predict(self, image: np.ndarray, announcement: Announcement | None = None,
                      reservation: Reservation | None = None) -> Instances:
        """Queue one image (in its reserved room, if given) and await its instances; a full queue or a timeout
        is a 503 to retry."""
        retry = self.settings.retry_after_s
        try:
            instances = await self.batcher.run(image, cost=self.cost(image), timeout_s=self.settings.predict_timeout_s,
                                               announcement=announcement, reservation=reservation)
        except QueueFullError:
            raise self.busy_error("image") from None
        except TimeoutError:
            raise ServiceUnavailableError(f"no prediction within {self.settings.predict_timeout_s:g} s: retry later",
                                          code="timeout", retry_after_s=retry) from None
        except BatcherClosedError:
            raise ServiceUnavailableError("the service is shutting down", code="shutting_down",
                                          retry_after_s=retry) from None
        height, width = image.shape[:2]
        self.metrics.images.inc()
        self.metrics.tiles.inc(window_count(height, width, self.tile_size))
        self.metrics.cells.inc(len(instances))
        return instances


_PATH_KEYS = frozenset({"run", "run_dir", "path", "root", "dir", "directory", "file", "store", "cache_dir"})
_ABSOLUTE = re.compile(r"^(/|~|\\\\|[A-Za-z]:[\\/]|file:)")


def _last_part(text: str) -> str:
    name = PureWindowsPath(text).name if "\\" in text else PurePosixPath(text.removeprefix("file:")).name
    return name or text.strip("/\\")


def _without_paths(value: Any, key: str = "") -> Any:
    """A copy where strings that are server paths (absolute, or under a key such as `path` or `run`) keep
    only their last part: a client learns a run's or a data set's name, never where it lies on the server."""
    if isinstance(value, dict):
        return {k: _without_paths(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_paths(v) for v in value]
    if hasattr(value, "__fspath__") or (isinstance(value, str) and (key in _PATH_KEYS or _ABSOLUTE.match(value))):
        return _last_part(str(value))
    return value


def _strict_json(value: Any) -> Any:
    """A copy with non-finite floats replaced by None, tuples by lists and paths by strings."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)
