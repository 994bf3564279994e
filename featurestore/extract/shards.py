"""Encoding shards with the encoder on the critical path and everything else beside it.

Three stages overlap: a reader thread loads tiles ahead, the calling thread runs the encoder, and
a writer thread converts, writes and fsyncs finished shards. Batches never cross shard boundaries,
so a shard's features do not depend on which other shards a run (or a worker) processed: a
resumed or distributed run writes the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from featurestore.datasets.base import TileDataset, read_tiles
from featurestore.encoders.encoder import FrozenEncoder
from featurestore.store import layout
from featurestore.store.quantize import quantize_int8_into
from featurestore.store.writer import FeatureShard, ShardData, StoreWriter, new_io_pool, pixel_hashes
from featurestore.views import apply_view

log = logging.getLogger(__name__)
_STOP = object()
_F16_MAX = 65504.0


@dataclass
class LoadedBatch:
    shard: int
    first: bool  # first batch of its shard
    last: bool  # last batch of its shard
    images: np.ndarray
    instances: np.ndarray | None
    classes: np.ndarray | None
    hashes: np.ndarray  # pixel hash per tile


def iter_batches(dataset: TileDataset, shards: Sequence[int], shard_tiles: int, batch_size: int,
                 tile_size: int, pixel_hash: str) -> Iterator[LoadedBatch]:
    n_tiles = len(dataset)
    for shard in shards:
        tiles = layout.shard_range(shard, n_tiles, shard_tiles)
        starts = list(range(tiles.start, tiles.stop, batch_size))
        for position, start in enumerate(starts):
            batch = read_tiles(dataset, start, min(start + batch_size, tiles.stop), tile_size)
            yield LoadedBatch(shard, position == 0, position == len(starts) - 1, batch.images, batch.instances,
                              batch.classes, pixel_hashes(batch.images, pixel_hash))


class _Worker(threading.Thread):
    """A daemon thread that records its exception for the caller to re-raise."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as error:  # handed to the calling thread, which re-raises it
            self.error = error


def encode_shards(dataset: TileDataset, encoder: FrozenEncoder, writer: StoreWriter, shards: Sequence[int],
                  batch_size: int, on_tiles: Callable[[int], None] | None = None, prefetch: int = 3,
                  writer_threads: int | None = None) -> int:
    """Encode and write the given shards; returns the number of tiles written.

    Shards are independent files, so several writer threads can write different shards at once:
    one is enough beside a CPU encoder (they share the cores), a GPU outruns one disk writer.
    """
    n_writers = writer_threads or (4 if encoder.device.type == "cuda" else 1)
    storage = writer.manifest.storage
    tile_size = writer.manifest.dataset.tile_size
    half = storage.dtype == "float16"
    loaded: queue.Queue = queue.Queue(maxsize=prefetch)
    finished: queue.Queue = queue.Queue(maxsize=n_writers + 1)
    stop = threading.Event()
    written = [0]
    count_lock = threading.Lock()

    def read() -> None:
        try:
            for batch in iter_batches(dataset, shards, storage.shard_tiles, batch_size, tile_size,
                                      writer.manifest.pixel_hash):
                while not stop.is_set():
                    try:
                        loaded.put(batch, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        finally:
            loaded.put(_STOP)

    def write() -> None:
        while True:
            item = finished.get()
            if item is _STOP:
                return
            data = _assemble(*item)
            writer.write_shard(data, io)
            with count_lock:
                written[0] += data.n_tiles

    io = new_io_pool(n_writers)
    reader = _Worker(read, "cellgap-reader")
    writer_threads_ = [_Worker(write, f"cellgap-writer-{i}") for i in range(n_writers)]
    reader.start()
    for thread in writer_threads_:
        thread.start()
    cuda = encoder.device.type == "cuda"
    state: dict = {"current": None}

    def finish(batch: LoadedBatch, host: dict, event) -> None:
        """Collect a batch whose features are (or are being) copied to host memory."""
        if event is not None:
            event.synchronize()
        if batch.first:
            state["current"] = {"images": [], "instances": [], "classes": [], "hashes": [], "features": {}}
        current = state["current"]
        current["images"].append(batch.images)
        current["hashes"].append(batch.hashes)
        current["instances"].append(batch.instances)
        current["classes"].append(batch.classes)
        for key, values in host.items():
            if isinstance(values, FeatureShard):
                current["features"][key] = values
            else:
                current["features"].setdefault(key, []).append(values.numpy())
        if on_tiles is not None:
            on_tiles(len(batch.images))
        if batch.last:
            _hand_over(finished, writer_threads_, (batch.shard, current))
            state["current"] = None

    pending = None  # on a GPU, a batch's copy to host overlaps the next batch's forward pass
    buffers: dict[tuple[str, str], FeatureShard | None] = {}  # on a CPU, the encoder writes into the shard's file memory
    offset = 0
    try:
        while True:
            batch = loaded.get()
            if batch is _STOP:
                break
            if batch.first:
                offset = 0
                buffers = {} if cuda else {(view, layer.name): writer.feature_buffer(batch.shard, view, layer.name)
                                           for view in storage.views for layer in encoder.description.layers}
            tiles = torch.from_numpy(batch.images)
            if cuda:
                tiles = tiles.pin_memory()
            host: dict[tuple[str, str], torch.Tensor | FeatureShard] = {}
            for view in storage.views:
                maps = encoder(apply_view(tiles, view, axes=(1, 2)))
                for layer, values in zip(encoder.description.layers, maps):
                    key = (view, layer.name)
                    if buffers.get(key) is not None:
                        host[key] = _store_into(buffers[key], offset, values, storage.dtype)
                    else:
                        values = values.clamp(-_F16_MAX, _F16_MAX).half() if half else values
                        host[key] = _to_host(values, cuda)
            offset += len(batch.images)
            event = None
            if cuda:
                event = torch.cuda.Event()
                event.record()
            if pending is not None:
                finish(*pending)
            pending = (batch, host, event)
        if pending is not None:
            finish(*pending)
        if reader.error is not None:
            raise reader.error
    except BaseException:
        stop.set()
        _drain(finished)  # shards not written yet are written by the next run
        raise
    finally:
        stop.set()
        _drain(loaded)
        _stop_writers(finished, writer_threads_)
        io.shutdown()
        reader.join(timeout=5)
    for thread in writer_threads_:
        if thread.error is not None:
            raise thread.error
    return written[0]


def _store_into(target: FeatureShard, offset: int, values: torch.Tensor, dtype: str) -> FeatureShard:
    """Convert a batch's features straight into its rows of the shard's file memory (no copy later)."""
    rows = slice(offset, offset + len(values))
    stored = torch.from_numpy(target.values.tiles[rows])
    if dtype == "int8":
        quantize_int8_into(values, stored, torch.from_numpy(target.scales.tiles[rows]))
        return target
    stored.copy_(values)
    if dtype == "float16":
        stored.clamp_(-_F16_MAX, _F16_MAX)  # beyond float16's range: its largest finite value, not inf
    return target


def _to_host(values: torch.Tensor, cuda: bool) -> torch.Tensor:
    """Host copy of a feature map: asynchronous into pinned memory on a GPU, plain on a CPU."""
    if not cuda:
        return values
    buffer = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    buffer.copy_(values, non_blocking=True)
    return buffer


def _hand_over(finished: queue.Queue, writer_threads: list[_Worker], data: tuple[int, dict]) -> None:
    while True:
        failed = next((t.error for t in writer_threads if t.error is not None), None)
        if failed is not None:
            raise failed
        try:
            finished.put(data, timeout=0.2)
            return
        except queue.Full:
            continue


def _stop_writers(finished: queue.Queue, threads: list[_Worker]) -> None:
    """One stop mark per writer after the queued shards; a writer that died no longer takes from the queue,
    so never wait on a full queue for it."""
    for _ in threads:
        while any(thread.is_alive() for thread in threads):
            try:
                finished.put(_STOP, timeout=0.2)
                break
            except queue.Full:
                continue
    for thread in threads:
        thread.join()


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _assemble(shard: int, parts: dict) -> ShardData:
    """A shard's data as the batches it was encoded in (no concatenation: the writer writes parts in order)."""
    def labels(values: list) -> list[np.ndarray] | None:
        return None if any(v is None for v in values) else values

    instances, classes = labels(parts["instances"]), labels(parts["classes"])
    if instances is not None and classes is None:  # untyped labels: every cell is class 1
        classes = [(part > 0).astype(np.uint8) for part in instances]
    return ShardData(shard=shard, images=parts["images"], instances=instances, classes=classes,
                     features=parts["features"], hashes=parts["hashes"])
