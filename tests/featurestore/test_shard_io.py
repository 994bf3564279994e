"""Shard files written from page-aligned memory (O_DIRECT where allowed), the buffer pool, int8 in torch,
and the allocator setting: each against an independent reference (zarr-python, numpy, the plain path)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cellgap.core.allocator import keep_freed_memory
from cellgap.featurestore.extract.quantize import quantize_int8_into
from cellgap.featurestore.store import open_store, shardfile
from cellgap.featurestore.store.arrays import create_array, shard_file, shard_layout
from cellgap.featurestore.store.layout import ArraySpec
from cellgap.featurestore.store.quantize import quantize_int8
from cellgap.featurestore.store.shardfile import ShardBuffer, ShardBufferPool, fill_buffer, write_shard_file
from cellgap.featurestore.store.writer import StoreWriter
from tests.conftest import error_of
from tests.featurestore.test_store import extract

# 3*5*7 float16 = 210 bytes per tile: no multiple of the 4096-byte direct-I/O block, so padding is exercised
TILE = (3, 5, 7)


def _array(folder: Path, n_tiles: int = 7, shard_tiles: int = 4) -> zarr.Array:
    group = zarr.open_group(str(folder / "s.zarr"), mode="w")
    return create_array(group, ArraySpec("a", (n_tiles, *TILE), "float16", True, "none"), shard_tiles)


def _values(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *TILE)).astype(np.float16)


@pytest.mark.parametrize("shard,n", [(0, 4), (1, 3)])  # a full shard and the short last one
def test_buffer_written_shard_reads_back_in_zarr_python(tmp_path, shard, n):
    array = _array(tmp_path)
    layout = shard_layout(array)
    buffer = fill_buffer(ShardBuffer(layout, n), [_values(2, shard), _values(n - 2, shard + 7)])
    path = shard_file(tmp_path / "s.zarr", array, shard)
    write_shard_file(path, layout, buffer)
    assert path.stat().st_size == n * layout.raw_chunk_bytes + layout.shard_tiles * 16 + 4  # padding truncated away
    expected = np.concatenate([_values(2, shard), _values(n - 2, shard + 7)])
    reread = zarr.open_array(str(tmp_path / "s.zarr" / "a"), mode="r")
    assert np.array_equal(np.asarray(reread[shard * 4 : shard * 4 + n]), expected)
    assert not list(path.parent.glob("*.partial"))


def test_buffer_and_parts_write_the_same_bytes(tmp_path):
    array = _array(tmp_path)
    layout = shard_layout(array)
    parts = [_values(1), _values(3, 1)]
    write_shard_file(tmp_path / "from-parts", layout, parts)
    write_shard_file(tmp_path / "from-buffer", layout, fill_buffer(ShardBuffer(layout, 4), parts))
    assert (tmp_path / "from-parts").read_bytes() == (tmp_path / "from-buffer").read_bytes()


def test_file_system_refusing_direct_io_gets_the_same_file(tmp_path, monkeypatch):
    """tmpfs and some network file systems answer O_DIRECT with EINVAL: the page cache path writes the same bytes."""
    array = _array(tmp_path)
    layout = shard_layout(array)
    buffer = fill_buffer(ShardBuffer(layout, 4), [_values(4)])
    write_shard_file(tmp_path / "direct", layout, buffer)
    real_open = os.open
    refused = []

    def refuse_direct(path, flags, *args, **kwargs):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(shardfile.os, "open", refuse_direct)
    write_shard_file(tmp_path / "buffered", layout, buffer)
    assert refused or not hasattr(os, "O_DIRECT")
    assert (tmp_path / "buffered").read_bytes() == (tmp_path / "direct").read_bytes()
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_store_on_tmpfs_is_written_and_read(tmp_path):
    """A real file system without O_DIRECT, end to end through extraction."""
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        store = Path(folder) / "s.zarr"
        extract(store, dataset="synthetic:4", shard_tiles=2, batch_size=2)
        reference = tmp_path / "disk.zarr"
        extract(reference, dataset="synthetic:4", shard_tiles=2, batch_size=2)
        a, b = open_store(str(store)), open_store(str(reference))
        for layer in a.manifest.layer_names:
            assert np.array_equal(a.read_stored_features(np.arange(4), layer)[0],
                                  b.read_stored_features(np.arange(4), layer)[0])


def test_pool_reuses_memory_of_the_same_shape_only(tmp_path):
    layout = shard_layout(_array(tmp_path))
    pool = ShardBufferPool(keep=1)
    first = pool.take(layout, 4)
    pool.give(first)
    pool.give(ShardBuffer(layout, 4))  # beyond `keep`: dropped
    assert pool.take(layout, 4) is first
    assert pool.take(layout, 4) is not first
    assert pool.take(layout, 3).n_tiles == 3
    with pytest.raises(Exception, match="1..4 tiles"):
        ShardBuffer(layout, 5)


def test_torch_int8_matches_numpy_bit_for_bit():
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(3, 6, 9, 11, generator=generator) * torch.rand(3, 6, 1, 1, generator=generator) * 40
    values[1, 2] = 0  # an all-zero channel gets scale 1
    values = values.transpose(2, 3)  # not contiguous, as ViT token grids are
    codes, scales = torch.empty(values.shape, dtype=torch.int8), torch.empty(3, 6)
    quantize_int8_into(values, codes, scales)
    expected_codes, expected_scales = quantize_int8(values.numpy())
    assert np.array_equal(codes.numpy(), expected_codes) and np.array_equal(scales.numpy(), expected_scales)
    assert scales[1, 2] == 1.0


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_encoder_filled_buffers_write_the_same_store_as_float_parts(tmp_path, monkeypatch, dtype):
    """The CPU path (features converted into file memory by the encoder's threads) against the plain path
    (float batches converted and written by the writer thread, as on a GPU)."""
    direct = tmp_path / "direct.zarr"
    extract(direct, dataset="synthetic:5", shard_tiles=2, batch_size=2, dtype=dtype)
    monkeypatch.setattr(StoreWriter, "feature_buffer", lambda self, shard, view, layer: None)
    plain = tmp_path / "plain.zarr"
    extract(plain, dataset="synthetic:5", shard_tiles=2, batch_size=2, dtype=dtype)
    files = sorted(p for p in (direct / "features").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(files) == (3 if dtype != "int8" else 6) * 4  # shards x (layers, and scales for int8)
    for path in files:
        assert path.read_bytes() == (plain / path.relative_to(direct)).read_bytes(), path


def test_allocator_setting_serves_large_blocks_from_the_heap():
    """After the setting, a 64 MiB array is no separate mmap (glibc counts those in mallinfo2().hblks)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting applies to glibc only")
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    assert keep_freed_memory() is True
    before = libc.mallinfo2().hblks
    block = np.ones(8 * 2**20)  # 64 MiB: an mmap under glibc's defaults
    assert libc.mallinfo2().hblks == before and block.sum() == 8 * 2**20


@pytest.mark.parametrize("codec", ["none", "zstd", "blosc-lz4", "lz4-shuffle"])
@pytest.mark.parametrize("whole_bytes", [0, 2**30])  # per-shard gathers, and the small-array whole read
def test_reader_matches_zarr_python_in_any_order(tmp_path, codec, whole_bytes):
    from cellgap.featurestore.store.shardfile import ShardFileReader

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    array = create_array(group, ArraySpec("a", (11, *TILE), "float16", True, codec), 4)
    values = _values(11, 5)
    array[:9] = values[:9]  # the last shard is never written: it reads as zeros
    reader = ShardFileReader(tmp_path / "s.zarr" / "a", lambda s: array.metadata.encode_chunk_key((s, 0, 0, 0)),
                             11, shard_layout(array), whole_bytes=whole_bytes)
    expected = np.asarray(array[:])
    assert not expected[9:].any()
    rng = np.random.default_rng(0)
    for order in ([3], [0, 1, 2, 3, 5], [7, 6, 5, 4], list(range(11)), [2, 2, 10], rng.permutation(11)[:6]):
        assert np.array_equal(reader.read(np.array(order)), expected[order]), order
    with pytest.raises(IndexError):
        reader.read(np.array([-1]))
    with pytest.raises(IndexError):
        reader.read(np.array([11]))


@pytest.mark.parametrize("fail_at", [0, 3])  # the first shard, and one written while the queue is full
def test_a_writer_failing_mid_run_ends_the_extraction_with_its_error(tmp_path, monkeypatch, fail_at):
    """No hang on a full hand-over queue, the error reaches the caller, and written shards stay done."""
    import time

    real_write = StoreWriter.write_shard
    written_before_failure: list[int] = []
    written: list[int] = []
    failed = []

    def failing(self, data, io=None):
        time.sleep(0.2)  # the encoder fills the queue meanwhile
        if data.shard == fail_at:
            failed.append(data.shard)
            raise OSError(28, "No space left on device")
        real_write(self, data, io)
        written.append(data.shard)
        if not failed:
            written_before_failure.append(data.shard)

    monkeypatch.setattr(StoreWriter, "write_shard", failing)
    error = error_of(lambda: extract(tmp_path / "s.zarr", dataset="synthetic:12", shard_tiles=2, batch_size=2), 120)
    assert error is not None and "No space left" in str(error)
    done = open_store(str(tmp_path / "s.zarr")).done.reshape(-1, 2)
    # Writers run in parallel, so which shards finished before the failure depends on timing; what
    # must hold is that every shard finished before it is done, and nothing is done without its data.
    assert done[written_before_failure].all()
    assert set(np.flatnonzero(done.any(axis=1))) <= set(written)
    assert not done[fail_at].any()


def test_new_nested_folders_are_made_durable_in_their_parents(tmp_path, monkeypatch):
    """Nested chunk keys (c/3/0/0, stores made before the flat keys) create several folders for a new shard;
    each is fsynced in its parent, since the writer later fsyncs only the shard file's own folder."""
    synced = []
    monkeypatch.setattr(shardfile, "fsync_folder", lambda folder: synced.append(Path(folder)))
    (tmp_path / "a").mkdir()
    layout = shardfile.ShardLayout(shard_tiles=2, tile_shape=(3,), dtype=np.dtype("<f4"))
    target = tmp_path / "a" / "c" / "3" / "0" / "shard"
    write_shard_file(target, layout, np.ones((2, 3), np.float32))
    assert synced == [tmp_path / "a", tmp_path / "a" / "c", tmp_path / "a" / "c" / "3"]
    synced.clear()
    write_shard_file(tmp_path / "a" / "c" / "3" / "0" / "other", layout, np.ones((2, 3), np.float32))
    assert synced == []  # existing folders cost one stat, no fsync


@pytest.mark.parametrize(("codec", "dtype"), [("none", "float16"), ("zstd", "int32"), ("blosc-lz4", "float16"),
                                              ("lz4-shuffle", "int32"), ("lz4-shuffle", "uint8")])
def test_direct_shard_writes_match_zarr_python_byte_for_byte(tmp_path, codec, dtype):
    """Labels (lz4-shuffle, zstd in older stores) and features take the direct path; zarr-python must read
    what it writes, and the files must be the ones zarr-python itself writes for the same tiles."""
    values = (np.random.default_rng(2).integers(0, 9, size=(4, 16, 16)) * (np.arange(16) > 7)).astype(dtype)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    ours = create_array(group, ArraySpec("ours", (6, 16, 16), dtype, True, codec), 4)
    theirs = create_array(group, ArraySpec("theirs", (6, 16, 16), dtype, True, codec), 4)
    layout = shard_layout(ours)
    assert layout is not None and layout.raw == (codec == "none")
    write_shard_file(shard_file(tmp_path / "s.zarr", ours, 0), layout, [values[:1], values[1:]])
    theirs[:4] = values
    assert np.array_equal(np.asarray(zarr.open_array(str(tmp_path / "s.zarr" / "ours"), mode="r")[:4]), values)
    ours_file, theirs_file = shard_file(tmp_path / "s.zarr", ours, 0), shard_file(tmp_path / "s.zarr", theirs, 0)
    assert ours_file.read_bytes() == theirs_file.read_bytes()
