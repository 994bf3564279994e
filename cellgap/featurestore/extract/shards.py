"""Encoding shards with the encoder on the critical path and everything else beside it.

Three stages overlap: a reader thread loads tiles ahead, the encoder runs (on a CPU as one replica
per core, see `replicas`), and a writer thread converts, writes and fsyncs finished shards. Batches
never cross shard boundaries, so a shard's features do not depend on which other shards a run (or a
worker) processed: a resumed or distributed run writes the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cellgap.core.views import apply_view
from cellgap.featurestore.datasets.base import TileDataset, read_tiles
from cellgap.featurestore.encoders.encoder import FrozenEncoder
from cellgap.featurestore.extract.quantize import quantize_int8_into
from cellgap.featurestore.extract.replicas import Worker, replica_count, run_replicas
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.writer import FeatureShard, ShardData, StoreWriter, new_io_pool, pixel_hashes

log = logging.getLogger(__name__)
_STOP = object()
_F16_MAX = 65504.0
FeatureKey = tuple[str, str]  # (view, layer)


@dataclass
class LoadedBatch:
    shard: int
    position: int  # batch index within its shard
    batches: int  # batches in its shard
    offset: int  # the first tile's row within its shard
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
            yield LoadedBatch(shard, position, len(starts), start - tiles.start, batch.images, batch.instances,
                              batch.classes, pixel_hashes(batch.images, pixel_hash))


@dataclass
class _ShardParts:
    buffers: dict[FeatureKey, FeatureShard | None]  # the shard's file memory, where the encoder writes directly
    encoded: list[tuple[LoadedBatch, dict] | None]  # (batch, its features) by position
    left: int


class _ShardAssembly:
    """Shards whose batches are being encoded, completed in any order: replicas encode batches of one shard
    side by side, each into its own rows of the shard's memory."""

    def __init__(self, writer: StoreWriter, keys: list[FeatureKey], direct: bool,
                 on_tiles: Callable[[int], None] | None) -> None:
        self._writer, self._keys, self._direct, self._on_tiles = writer, keys, direct, on_tiles
        self._open: dict[int, _ShardParts] = {}
        self._lock = threading.Lock()

    def buffers(self, batch: LoadedBatch) -> dict[FeatureKey, FeatureShard | None]:
        with self._lock:
            parts = self._open.get(batch.shard)
            if parts is None:
                buffers = {key: self._writer.feature_buffer(batch.shard, *key) for key in self._keys} \
                    if self._direct else {}
                parts = self._open[batch.shard] = _ShardParts(buffers, [None] * batch.batches, batch.batches)
            return parts.buffers

    def add(self, batch: LoadedBatch, host: dict) -> ShardData | None:
        """Record an encoded batch; returns its shard's data once every batch of the shard is in."""
        with self._lock:
            parts = self._open[batch.shard]
            parts.encoded[batch.position] = (batch, host)
            parts.left -= 1
            if self._on_tiles is not None:
                self._on_tiles(len(batch.images))
            if parts.left:
                return None
            del self._open[batch.shard]
        return _assemble(batch.shard, parts.encoded)


def encode_shards(dataset: TileDataset, encoder: FrozenEncoder, writer: StoreWriter, shards: Sequence[int],
                  batch_size: int, on_tiles: Callable[[int], None] | None = None, prefetch: int = 3,
                  writer_threads: int | None = None, replicas: int | None = None) -> int:
    """Encode and write the given shards; returns the number of tiles written.

    Shards are independent files, so several writer threads can write different shards at once:
    one is enough beside a CPU encoder (they share the cores), a GPU outruns one disk writer.
    `replicas` (CPU only) splits torch's threads between that many encoder replicas; by default one
    single-threaded replica per thread.
    """
    repeated = sorted(shard for shard, count in Counter(shards).items() if count > 1)
    if repeated:
        raise ValueError(f"shards listed more than once: {repeated}")
    cuda = encoder.device.type == "cuda"
    n_replicas = replica_count(encoder.device, replicas)
    n_writers = writer_threads or (4 if cuda else 1)
    storage = writer.manifest.storage
    tile_size = writer.manifest.dataset.tile_size
    half = storage.dtype == "float16"
    loaded: queue.Queue = queue.Queue(maxsize=prefetch + n_replicas - 1)
    finished: queue.Queue = queue.Queue(maxsize=n_writers + 1)
    stop = threading.Event()
    written = [0]
    count_lock = threading.Lock()
    layers = encoder.description.layers
    assembly = _ShardAssembly(writer, [(view, layer.name) for view in storage.views for layer in layers],
                              direct=not cuda, on_tiles=on_tiles)

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
            writer.write_shard(item, io)
            with count_lock:
                written[0] += item.n_tiles

    def finish(batch: LoadedBatch, host: dict, event) -> None:
        """Collect a batch whose features are (or are being) copied to host memory."""
        if event is not None:
            event.synchronize()
        data = assembly.add(batch, host)
        if data is not None:
            _hand_over(finished, writer_threads_, data, stop)

    def encode() -> None:
        """One replica: batches from the reader until none is left. On a GPU, a batch's copy to host overlaps
        the next batch's forward pass; on a CPU, the encoder writes into the shard's file memory."""
        pending = None
        while (batch := _next_batch(loaded, stop)) is not None:
            buffers = assembly.buffers(batch)
            tiles = torch.from_numpy(batch.images)
            if cuda:
                tiles = tiles.pin_memory()
            host: dict[FeatureKey, torch.Tensor | FeatureShard] = {}
            for view in storage.views:
                maps = encoder(apply_view(tiles, view, axes=(1, 2)))
                for layer, values in zip(layers, maps):
                    key = (view, layer.name)
                    buffer = buffers.get(key)
                    if buffer is not None:
                        host[key] = _store_into(buffer, batch.offset, values, storage.dtype)
                    else:
                        values = values.clamp(-_F16_MAX, _F16_MAX).half() if half else values
                        host[key] = _to_host(values, cuda)
            event = None
            if cuda:
                event = torch.cuda.Event()
                event.record()
            if pending is not None:
                finish(*pending)
            pending = (batch, host, event)
        if pending is not None and not stop.is_set():
            finish(*pending)

    io = new_io_pool(n_writers)
    reader = Worker(read, "cellgap-reader")
    writer_threads_ = [Worker(write, f"cellgap-writer-{i}") for i in range(n_writers)]
    reader.start()
    for thread in writer_threads_:
        thread.start()
    try:
        run_replicas(n_replicas, encode, stop.set)
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


def _next_batch(loaded: queue.Queue, stop: threading.Event) -> LoadedBatch | None:
    """The next loaded batch, or None once the reader is done (the end mark is put back for the other
    replicas) or the job is stopping."""
    while not stop.is_set():
        try:
            item = loaded.get(timeout=0.2)
        except queue.Empty:
            continue
        if item is _STOP:
            loaded.put(_STOP)
            return None
        return item
    return None


def _store_into(target: FeatureShard, offset: int, values: torch.Tensor, dtype: str) -> FeatureShard:
    """Convert a batch's features straight into its rows of the shard's file memory (no copy later)."""
    rows = slice(offset, offset + len(values))
    stored = torch.from_numpy(target.values.tiles[rows])
    if dtype == "int8":
        assert target.scales is not None  # an int8 store's feature buffers carry scales (StoreWriter.feature_buffer)
        quantize_int8_into(values, stored, torch.from_numpy(target.scales.tiles[rows]))
        return target
    stored.copy_(values)
    if dtype == "float16" and _overflowed(stored):
        stored.clamp_(-_F16_MAX, _F16_MAX)  # beyond float16's range: its largest finite value, not inf
    return target


def _overflowed(stored: torch.Tensor) -> bool:
    """Whether any value may have become infinite in float16. Reading the batch once is cheaper than clamping
    it (a read and a write), and overflow is rare. A NaN hides the extremes, so it counts as overflow (the
    clamp keeps NaN as NaN)."""
    low, high = torch.aminmax(stored)
    return not bool(torch.isfinite(low) and torch.isfinite(high))


def _to_host(values: torch.Tensor, cuda: bool) -> torch.Tensor:
    """Host copy of a feature map: asynchronous into pinned memory on a GPU, plain on a CPU."""
    if not cuda:
        return values
    buffer = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    buffer.copy_(values, non_blocking=True)
    return buffer


def _hand_over(finished: queue.Queue, writer_threads: list[Worker], data: ShardData, stop: threading.Event) -> None:
    """Queue a finished shard for the writers; dropped when the job is stopping (the next run redoes it)."""
    while not stop.is_set():
        failed = next((t.error for t in writer_threads if t.error is not None), None)
        if failed is not None:
            raise failed
        try:
            finished.put(data, timeout=0.2)
            return
        except queue.Full:
            continue


def _stop_writers(finished: queue.Queue, threads: list[Worker]) -> None:
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


def _assemble(shard: int, encoded: list) -> ShardData:
    """A shard's data as the batches it was encoded in (no concatenation: the writer writes parts in order)."""
    batches = [batch for batch, _ in encoded]

    def labels(values: list) -> list[np.ndarray] | None:
        return None if any(v is None for v in values) else values

    instances, classes = labels([b.instances for b in batches]), labels([b.classes for b in batches])
    if instances is not None and classes is None:  # untyped labels: every cell is class 1
        classes = [(part > 0).astype(np.uint8) for part in instances]
    features: dict[FeatureKey, list[np.ndarray] | FeatureShard] = {}
    for key, first in encoded[0][1].items():
        features[key] = first if isinstance(first, FeatureShard) else [host[key].numpy() for _, host in encoded]
    return ShardData(shard=shard, images=[b.images for b in batches], instances=instances, classes=classes,
                     features=features, hashes=[b.hashes for b in batches])
