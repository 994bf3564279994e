"""Reading and writing whole shard files of the store's own layout directly, per the Zarr v3 sharding spec.

zarr-python pushes every inner chunk through its async codec pipeline, which costs several times
the copy itself (measured: ~6 ms of CPU per tile to write a 1.4 MB tile, most of it overhead), and
on a CPU-bound extraction that time is taken from the encoder. For the layout this store creates
(one tile per inner chunk, raw or zstd-compressed, shard index at the end with a crc32c), the
spec makes a shard file simple: the chunks back to back, then (offset, nbytes) per chunk as
little-endian uint64, then the index's crc32c. New stores end every inner chunk with its own crc32c
(zarr's crc32c codec), so a damaged tile is found by its checksum, not read as data. Both directions
are checked against zarr-python's own reads and writes in the tests; other layouts and remote stores
use zarr-python.
"""
from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np

from cellgap.core.atomic import temporary_beside, write_atomically
from cellgap.featurestore.errors import StoreError

log = logging.getLogger(__name__)
EMPTY = np.uint64(2**64 - 1)
CHECKSUM_BYTES = 4
DIRECT_ALIGN = 4096  # O_DIRECT wants buffer address, offset and length aligned to the device's block size
DIRECT_STEP = 16 * 2**20  # bytes per write call (a multiple of DIRECT_ALIGN)
SMALL_ARRAY_BYTES = 16 * 2**20  # arrays up to this size are read whole into memory on first use


@dataclass(frozen=True)
class ShardLayout:
    """What a shard file of one array looks like."""

    shard_tiles: int
    tile_shape: tuple[int, ...]
    dtype: np.dtype
    compression: tuple[tuple[str, object], ...] | None = None  # the inner chunks' numcodecs config; None: raw
    checksummed: bool = False  # each inner chunk ends with the crc32c of its bytes (stores before it: none)

    @property
    def raw(self) -> bool:
        return self.compression is None

    def codec(self) -> numcodecs.abc.Codec:
        """The codec of the inner chunks (zstd or blosc, as zarr-python writes them); raw layouts have none."""
        if self.compression is None:
            raise StoreError("raw inner chunks have no codec")
        return numcodecs.get_codec(dict(self.compression))

    @property
    def tile_bytes(self) -> int:
        return math.prod(self.tile_shape) * np.dtype(self.dtype).itemsize  # math, not numpy: read per batch

    @property
    def raw_chunk_bytes(self) -> int:
        """Bytes of one raw inner chunk on disk: the tile, then its checksum where the layout has one."""
        return self.tile_bytes + (CHECKSUM_BYTES if self.checksummed else 0)

    def tiles_view(self, buffer: np.ndarray | mmap.mmap, n_tiles: int) -> np.ndarray:
        """Raw chunks in tile order as (n_tiles, *tile_shape), stepping over each chunk's checksum."""
        inner: list[int] = []  # C-order strides of one tile, innermost first
        step = np.dtype(self.dtype).itemsize
        for size in reversed(self.tile_shape):
            inner.append(step)
            step *= size
        return np.ndarray((n_tiles,) + self.tile_shape, self.dtype, buffer=buffer, offset=0,
                          strides=(self.raw_chunk_bytes, *reversed(inner)))


class ShardBuffer:
    """A whole shard file in page-aligned memory: the tiles first, room for the index after them.

    The encoder writes its features straight into `tiles`, and the file is written from this memory
    with O_DIRECT: no copy into the page cache and no kernel writeback later, work that would
    otherwise run on the same cores as a CPU encoder.
    """

    def __init__(self, layout: ShardLayout, n_tiles: int) -> None:
        if not 0 < n_tiles <= layout.shard_tiles:
            raise StoreError(f"a shard holds 1..{layout.shard_tiles} tiles, not {n_tiles}")
        self.layout, self.n_tiles = layout, n_tiles
        self.data_bytes = n_tiles * layout.raw_chunk_bytes
        self.file_bytes = self.data_bytes + layout.shard_tiles * 16 + CHECKSUM_BYTES
        size = _round_up(self.file_bytes, DIRECT_ALIGN)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)  # fault all pages in at once
        self.memory = np.frombuffer(mmap.mmap(-1, size, flags=flags), np.uint8)
        self.tiles = layout.tiles_view(self.memory, n_tiles)  # strided over the checksums of checksummed layouts


class ShardBufferPool:
    """Shard buffers handed back after their file is written, for the next shards of the same shape.

    Fresh memory costs the kernel a zeroed page per 4 KiB on first touch (about 0.3 ms per tile of a
    small encoder's features, on the encoder's cores); reused memory costs nothing.
    """

    def __init__(self, keep: int = 8) -> None:
        self._free: dict[tuple[ShardLayout, int], list[ShardBuffer]] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, layout: ShardLayout, n_tiles: int) -> ShardBuffer:
        with self._lock:
            free = self._free.get((layout, n_tiles))
            if free:
                return free.pop()
        return ShardBuffer(layout, n_tiles)

    def give(self, buffer: ShardBuffer) -> None:
        with self._lock:
            free = self._free.setdefault((buffer.layout, buffer.n_tiles), [])
            if len(free) < self._keep:
                free.append(buffer)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def write_shard_file(path: Path, layout: ShardLayout, tiles: ShardBuffer | np.ndarray | list[np.ndarray],
                     pool: ShardBufferPool | None = None) -> None:
    """Write one shard atomically and durably from its tiles: a filled `ShardBuffer`, or (n, *tile_shape) with
    n <= shard_tiles given as one array or as consecutive parts (batches). Raw parts are gathered into a
    shard buffer first, taken from and handed back to `pool` when one is given."""
    if isinstance(tiles, ShardBuffer):
        if tiles.layout != layout:
            raise StoreError(f"{path}: shard buffer of {tiles.layout} does not fit {layout}")
        if layout.raw:
            _write_raw_shard(path, layout, tiles)
            return
        tiles = tiles.tiles
    parts = [tiles] if isinstance(tiles, np.ndarray) else list(tiles)
    count = sum(len(part) for part in parts)
    if any(part.shape[1:] != layout.tile_shape for part in parts) or count > layout.shard_tiles:
        raise StoreError(f"{path}: shard data {[part.shape for part in parts]} does not fit tiles of {layout.tile_shape}")
    if layout.raw:
        buffer = fill_buffer(pool.take(layout, count) if pool is not None else ShardBuffer(layout, count), parts)
        _write_raw_shard(path, layout, buffer)
        if pool is not None:
            pool.give(buffer)
        return
    codec = layout.codec()
    chunks = [codec.encode(np.ascontiguousarray(tile, dtype=layout.dtype)) for part in parts for tile in part]
    if layout.checksummed:
        chunks = [bytes(chunk) + struct.pack("<I", google_crc32c.value(chunk)) for chunk in chunks]
    sizes = np.array([len(c) for c in chunks], dtype=np.uint64)
    index = np.full((layout.shard_tiles, 2), EMPTY, dtype="<u8")
    index[:count, 1] = sizes
    index[:count, 0] = np.cumsum(sizes) - sizes  # offsets: chunks back to back
    index_bytes = index.tobytes()
    write_durably(path, [*chunks, index_bytes, struct.pack("<I", google_crc32c.value(index_bytes))])


def fill_buffer(buffer: ShardBuffer, parts: list[np.ndarray]) -> ShardBuffer:
    """Copy consecutive parts (batches) into a shard buffer of exactly their total length."""
    if sum(len(part) for part in parts) != buffer.n_tiles:
        raise StoreError(f"{sum(len(part) for part in parts)} tiles given for a shard buffer of {buffer.n_tiles}")
    start = 0
    for part in parts:
        buffer.tiles[start : start + len(part)] = part  # casts to the stored (little-endian) dtype
        start += len(part)
    return buffer


def _write_raw_shard(path: Path, layout: ShardLayout, buffer: ShardBuffer) -> None:
    """Raw chunks lie back to back in tile order: the index is arithmetic."""
    step = layout.raw_chunk_bytes
    if layout.checksummed:
        memory = buffer.memory
        for tile in range(buffer.n_tiles):
            start = tile * step
            crc = google_crc32c.value(memory[start : start + layout.tile_bytes])
            memory[start + layout.tile_bytes : start + step] = np.frombuffer(struct.pack("<I", crc), np.uint8)
    index = np.full((layout.shard_tiles, 2), EMPTY, dtype="<u8")
    index[: buffer.n_tiles, 0] = np.arange(buffer.n_tiles, dtype=np.uint64) * step
    index[: buffer.n_tiles, 1] = step
    index_bytes = index.tobytes()
    tail = index_bytes + struct.pack("<I", google_crc32c.value(index_bytes))
    buffer.memory[buffer.data_bytes : buffer.file_bytes] = np.frombuffer(tail, np.uint8)
    write_aligned_durably(path, buffer.memory, buffer.file_bytes)


def write_aligned_durably(path: Path, memory: np.ndarray, nbytes: int) -> None:
    """Write the first `nbytes` of page-aligned memory (sized to a multiple of DIRECT_ALIGN) atomically and
    durably, bypassing the page cache where the file system allows it (tmpfs, for one, does not)."""
    if not hasattr(os, "O_DIRECT") or not _write_direct(path, memory, nbytes):
        write_durably(path, [memory.data[:nbytes]])


def _write_direct(path: Path, memory: np.ndarray, nbytes: int) -> bool:
    """False, leaving nothing behind, where the file system refuses direct I/O."""
    _ensure_folder(path.parent)
    temporary = temporary_beside(path)
    try:
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            return _refused(path, temporary)
        try:
            view, padded, written = memory.data, _round_up(nbytes, DIRECT_ALIGN), 0
            while written < padded:
                try:
                    written += os.write(descriptor, view[written : min(written + DIRECT_STEP, padded)])
                except OSError as error:
                    if error.errno != errno.EINVAL or written:
                        raise
                    return _refused(path, temporary)
            os.ftruncate(descriptor, nbytes)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
        return True
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _ensure_folder(folder: Path) -> None:
    """Create a shard's folder on first use (a stat is far cheaper than a mkdir that fails on every shard).

    Folders made here are made durable in their parents at once: the writer fsyncs only each file's own
    folder, and stores with nested chunk keys (c/3/0/0) create several levels for a new shard.
    """
    if os.path.isdir(folder):
        return
    missing = []
    parent = folder
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = parent.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_folder(created.parent)


def _refused(path: Path, temporary: Path) -> bool:
    log.debug("%s: the file system refuses O_DIRECT; writing through the page cache", path.parent)
    temporary.unlink(missing_ok=True)
    return False


def write_chunk_file(path: Path, chunk_shape: tuple[int, ...], dtype: np.dtype, values: np.ndarray) -> None:
    """Write one uncompressed regular chunk (raw little-endian bytes, padded to the full chunk) atomically."""
    full = np.zeros(chunk_shape, dtype)
    full[tuple(slice(0, n) for n in values.shape)] = values
    write_durably(path, [full.data.cast("B")])


def write_durably(path: Path, parts: list) -> None:
    """Write bytes-like parts to a temporary file, fsync it, and rename it into place (all or nothing)."""
    _ensure_folder(path.parent)
    write_atomically(path, parts, durable=True)


def fsync_folder(folder: Path) -> None:
    """Make renames inside a folder durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class _OpenShard:
    """One memory-mapped shard: its bytes (None when never written), its index, a regular view of raw chunks
    lying in order, and which of its tiles passed their checksum in this reader (None: no checksums)."""

    data: np.ndarray | None
    index: np.ndarray
    view: np.ndarray | None
    verified: np.ndarray | None


def read_shard_index(path: Path, data: np.ndarray, layout: ShardLayout) -> tuple[np.ndarray, int]:
    """The (offset, nbytes) index of a shard file after checking its crc32c and bounds, and where the data ends."""
    index_bytes = layout.shard_tiles * 16
    start = data.size - index_bytes - CHECKSUM_BYTES
    if start < 0:
        raise StoreError(f"{path}: shard file is truncated ({data.size} bytes)")
    stored = data[start : start + index_bytes]
    (expected,) = struct.unpack("<I", data[start + index_bytes :].tobytes())
    if google_crc32c.value(stored) != expected:
        raise StoreError(f"{path}: shard index checksum does not match; the file is damaged")
    index = np.frombuffer(stored, dtype="<u8").reshape(-1, 2)
    filled = index[:, 0] != EMPTY
    if np.any(index[filled, 0] + index[filled, 1] > start):
        raise StoreError(f"{path}: shard index points past the data; the file is damaged")
    return index, start


def check_chunk(path: Path, chunk: np.ndarray, tile: int) -> np.ndarray:
    """A checksummed inner chunk's bytes without their crc32c; StoreError naming the tile when they differ."""
    body = chunk[:-CHECKSUM_BYTES]
    if chunk.size < CHECKSUM_BYTES or google_crc32c.value(body) != struct.unpack("<I", chunk[-CHECKSUM_BYTES:].tobytes())[0]:
        raise StoreError(f"{path}: tile {tile} fails its checksum; the store is damaged (see cellgap store verify)")
    return body


class ShardFileReader:
    """Random tile access to one array through memory-mapped shard files.

    Checksummed chunks are checked the first time this reader hands a tile out (about 0.05 ms per MiB);
    later reads of the same tile, e.g. in the next epoch, cost nothing more.
    """

    def __init__(self, array_dir: Path, chunk_key: Callable[[int], str], n_tiles: int, layout: ShardLayout,
                 max_open: int = 64, whole_bytes: int = SMALL_ARRAY_BYTES) -> None:
        self._dir, self._key, self.n_tiles, self.layout = array_dir, chunk_key, n_tiles, layout
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()
        self._verified: dict[int, np.ndarray] = {}  # kept when a shard's mapping is dropped from `_open`
        self._max_open = max_open
        self._lock = threading.Lock()
        self._codec = None if layout.raw else layout.codec()
        self._whole: np.ndarray | None = None
        self._read_whole = n_tiles * layout.tile_bytes <= whole_bytes

    def shard_path(self, shard: int) -> Path:
        return self._dir / self._key(shard)

    def _shard(self, shard: int) -> _OpenShard:
        cached = self._open.get(shard)  # dict reads are atomic; only changes take the lock
        if cached is not None:
            return cached
        path = self.shard_path(shard)
        layout = self.layout
        if not path.exists():
            entry = _OpenShard(None, np.full((layout.shard_tiles, 2), EMPTY, np.uint64), None, None)
        else:
            data = np.memmap(path, dtype=np.uint8, mode="r")
            index, _ = read_shard_index(path, data, layout)
            filled = index[:, 0] != EMPTY
            view: np.ndarray | None = None
            if self._codec is None:
                if np.any(index[filled, 1] != layout.raw_chunk_bytes):
                    raise StoreError(f"{path}: shard chunks are not {layout.raw_chunk_bytes} bytes; the file is damaged")
                expected = np.arange(layout.shard_tiles, dtype=np.uint64) * layout.raw_chunk_bytes
                if filled.all() and np.array_equal(index[:, 0], expected):
                    view = layout.tiles_view(data, layout.shard_tiles)
            verified = None
            if layout.checksummed:
                verified = self._verified.setdefault(shard, np.zeros(layout.shard_tiles, bool))
            entry = _OpenShard(data, index, view, verified)
        with self._lock:
            self._open[shard] = entry
            while len(self._open) > self._max_open:
                self._open.popitem(last=False)
        return entry

    def _check(self, shard: int, opened: _OpenShard, positions: list[int]) -> None:
        """Check the checksums of the tiles at `positions` of a shard not yet checked by this reader."""
        verified, data = opened.verified, opened.data
        if verified is None or data is None:
            return
        for position in positions:
            if verified[position]:
                continue
            offset, length = opened.index[position]
            if offset != EMPTY:
                check_chunk(self.shard_path(shard), data[int(offset) : int(offset + length)],
                            shard * self.layout.shard_tiles + position)
            verified[position] = True

    def _chunk(self, shard: int, opened: _OpenShard, position: int) -> np.ndarray | int:
        """One tile of a shard whose chunks are compressed or not in order (0 where never written)."""
        offset, length = opened.index[position]
        if opened.data is None or offset == EMPTY:
            return 0
        raw = opened.data[int(offset) : int(offset + length)]
        if self.layout.checksummed:
            self._check(shard, opened, [position])
            raw = raw[:-CHECKSUM_BYTES]
        if self._codec is not None:
            try:
                raw = np.frombuffer(self._codec.decode(raw), np.uint8)
            except Exception as error:  # noqa: BLE001 (any codec failure means the bytes are damaged)
                raise StoreError(f"{self.shard_path(shard)}: tile {shard * self.layout.shard_tiles + position} "
                                 f"cannot be decoded ({error}); the store is damaged") from error
        if raw.size != self.layout.tile_bytes:
            raise StoreError(f"{self.shard_path(shard)}: tile {shard * self.layout.shard_tiles + position} holds "
                             f"{raw.size} bytes, not {self.layout.tile_bytes}; the store is damaged")
        return raw.view(self.layout.dtype).reshape(self.layout.tile_shape)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Tiles at `indices` as (len(indices), *tile_shape); tiles never written read as zeros.

        Sorted indices are fastest (one gather per shard and run); any order is correct. A small array
        (e.g. int8 scales, a few bytes per tile) is read whole once and then indexed in memory: per-shard
        bookkeeping would cost more than its bytes.
        """
        indices = np.asarray(indices, dtype=np.int64)
        wanted = indices.tolist()  # plain ints: a batch is small, numpy's per-call overhead is not
        if wanted and (min(wanted) < 0 or max(wanted) >= self.n_tiles):
            raise IndexError(f"tile index out of range 0..{self.n_tiles - 1}")
        if self._whole is None and self._read_whole:
            self._whole = self._gather(np.arange(self.n_tiles), list(range(self.n_tiles)))
        if self._whole is not None:
            return self._whole[indices]
        return self._gather(indices, wanted)

    def _gather(self, indices: np.ndarray, wanted: list[int]) -> np.ndarray:
        out = np.empty((len(indices),) + self.layout.tile_shape, self.layout.dtype)
        shard_tiles, opened = self.layout.shard_tiles, self._open
        first = 0
        while first < len(wanted):  # runs of consecutive requests in one shard, in request order
            shard = wanted[first] // shard_tiles
            end = first + 1
            while end < len(wanted) and wanted[end] // shard_tiles == shard:
                end += 1
            entry = opened.get(shard) or self._shard(shard)
            view, base = entry.view, shard * shard_tiles
            if view is not None:
                self._check(shard, entry, [w - base for w in wanted[first:end]])
            if view is not None and end - first >= 4 and view.flags.c_contiguous:  # take copies strided views whole
                np.take(view, indices[first:end] - base, axis=0, out=out[first:end], mode="clip")  # 'raise' buffers
            elif view is not None:  # random batches: mostly one tile per shard, where plain indexing is cheapest
                for row in range(first, end):
                    out[row] = view[wanted[row] - base]
            else:
                for row in range(first, end):
                    out[row] = self._chunk(shard, entry, wanted[row] - base)
            first = end
        return out
