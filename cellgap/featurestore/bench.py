"""`cellgap bench extract`: does storing hide behind the encoder, and do reads approach a numpy memmap?

All numbers of one table come from one run on the same tiles, batch size and threads, as ratios.
"""
from __future__ import annotations

import gc
import itertools
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cellgap.core.benchtools import report_rows
from cellgap.featurestore.datasets import open_dataset
from cellgap.featurestore.datasets.synthetic import make_tile
from cellgap.featurestore.encoders.encoder import EncoderSettings, FrozenEncoder, pick_device
from cellgap.featurestore.encoders.registry import resolve_preset
from cellgap.featurestore.extract.job import directory_bytes
from cellgap.featurestore.extract.replicas import replica_count, run_replicas
from cellgap.featurestore.extract.shards import encode_shards
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.manifest import StorageRecord, new_manifest
from cellgap.featurestore.store.reader import open_store
from cellgap.featurestore.store.writer import open_or_create


@dataclass
class ExtractBenchRow:
    encoder: str
    weights: str
    device: str
    dtype: str
    codec: str
    tiles: int
    replicas: int
    encoder_tiles_per_s: float
    extract_tiles_per_s: float
    extract_over_encoder: float
    intra_op_encoder_tiles_per_s: float  # the forward pass one batch at a time on all threads (no replicas)
    extract_over_intra_op: float
    feature_bytes_per_tile: float
    raw_float32_bytes_per_tile: float
    read_tiles_per_s: float
    memmap_tiles_per_s: float
    read_over_memmap: float
    first_read_tiles_per_s: float  # one pass through a fresh reader, files in the page cache: every checksum checked
    first_read_over_memmap: float
    cold_read_tiles_per_s: float  # first pass after the files left the page cache (posix_fadvise DONTNEED)
    cold_memmap_tiles_per_s: float
    cold_read_over_memmap: float
    disk_write_mb_per_s: float
    disk_cap_tiles_per_s: float


def write_sample(folder: Path, n_tiles: int) -> str:
    """Synthetic tiles saved in the CoNIC layout, so extraction reads them as cheaply as real data."""
    tiles = [make_tile(seed, n_classes=3) for seed in range(n_tiles)]
    np.save(folder / "images.npy", np.stack([t.image for t in tiles]))
    np.save(folder / "labels.npy", np.stack([np.stack([t.instances, t.classes.astype(np.int32)], -1) for t in tiles]))
    return f"conic:{folder}"


def bare_encoder_rate(encoder: FrozenEncoder, images: np.ndarray, batch_size: int, replicas: int | None = None) -> float:
    """Tiles/s of the encoder's forward pass alone (features left where they were computed), run as extraction
    runs it: by default one replica per CPU thread; `replicas=1` is one forward pass at a time on all threads."""
    batches = [torch.from_numpy(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    count = replica_count(encoder.device, replicas)
    _forward_all(encoder, batches[: 2 * count], count)  # warm-up
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    _forward_all(encoder, batches, count)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - started)


def _forward_all(encoder: FrozenEncoder, batches: list[torch.Tensor], replicas: int) -> None:
    taken = itertools.count()
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                position = next(taken)
            if position >= len(batches):
                return
            encoder(batches[position])

    run_replicas(replicas, loop, on_error=lambda: None)


def disk_write_rate(folder: Path, megabytes: int = 256) -> float:
    """Sequential write MB/s with fsync in the scratch folder: the ceiling of any store written there."""
    block = np.random.default_rng(0).integers(0, 255, 16 * 2**20, dtype=np.uint8).tobytes()
    path = folder / "disk-probe.bin"
    started = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(megabytes // 16):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return megabytes * 2**20 / seconds / 1e6


def extraction_rate(dataset, encoder: FrozenEncoder, store_path: str, batch_size: int, dtype: str, codec: str) -> float:
    """Tiles/s of the whole extraction path (read tiles, encode, convert, write, fsync, mark done) with the
    same warm encoder object the bare measurement used."""
    metas = dataset.metas()
    storage = StorageRecord(dtype=dtype, codec=codec, shard_tiles=32)
    writer, _ = open_or_create(store_path, new_manifest(encoder.description, dataset.info, metas, storage), metas)
    started = time.perf_counter()
    written = encode_shards(dataset, encoder, writer, writer.pending_shards(), batch_size)
    rate = written / (time.perf_counter() - started)
    writer.finalize()
    return rate


@dataclass(frozen=True)
class ReadRates:
    """Random-batch read tiles/s, the store against a numpy memmap: warm (in the page cache) and cold."""

    store: float
    memmap: float
    first_store: float  # a fresh reader's first pass with the files cached: the cost of checking each tile once
    first_memmap: float
    cold_store: float
    cold_memmap: float


def evict_from_page_cache(paths: Sequence[Path]) -> None:
    """Drop the files' pages from the page cache (flushed first: only clean pages can go), so the next read
    comes from the disk as a first epoch over a store larger than memory does."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def _files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def read_rates(store_path: str, scratch: Path, batch_size: int, rounds: int = 3, seed: int = 0) -> ReadRates:
    """Random-batch read tiles/s of every layer: the store's read API vs a numpy memmap of the same stored values
    (int8 codes are dequantised on the training device, so both sides read codes and scales alike). Warm rates
    read after two batches have filled the page cache; cold rates read one pass after the files were evicted,
    each side through a freshly opened store or memmap."""
    store = open_store(store_path)
    n = store.n_tiles
    layer_names = store.manifest.layer_names
    memmap_paths: dict[str, Path] = {}
    for name in layer_names:
        values, scales = store.read_stored_features(np.arange(n), name)
        for suffix, array in (("", values), ("_scale", scales)):
            if array is not None:
                memmap_paths[name + suffix] = scratch / f"{name.replace('/', '_')}{suffix}.npy"
                np.save(memmap_paths[name + suffix], array)
    del store
    rng = np.random.default_rng(seed)
    orders = [np.sort(rng.choice(n, size=min(batch_size, n), replace=False)) for _ in range(rounds * max(1, n // batch_size))]

    def store_reader() -> Callable[[np.ndarray], object]:
        fresh = open_store(store_path)
        return lambda idx: [fresh.read_stored_features(idx, name) for name in layer_names]

    def memmap_reader() -> Callable[[np.ndarray], object]:
        maps = [np.load(path, mmap_mode="r") for path in memmap_paths.values()]
        return lambda idx: [np.ascontiguousarray(mm[idx]) for mm in maps]

    def timed(read: Callable[[np.ndarray], object], passes: Sequence[np.ndarray]) -> float:
        started = time.perf_counter()
        for order in passes:
            read(order)
        return sum(len(o) for o in passes) / (time.perf_counter() - started)

    def warm(make: Callable[[], Callable[[np.ndarray], object]]) -> float:
        read = make()
        for order in orders[:2]:
            read(order)
        return timed(read, orders)

    def cold(make: Callable[[], Callable[[np.ndarray], object]], files: list[Path]) -> float:
        gc.collect()  # earlier readers' memory maps closed: pages still mapped would stay cached
        evict_from_page_cache(files)
        first_pass = orders[: max(1, n // batch_size)]  # each tile about once: a first epoch
        return timed(make(), first_pass)

    def first(make: Callable[[], Callable[[np.ndarray], object]]) -> float:
        make()(orders[0])  # the files' pages cached by another reader, as in a second run over a store
        return timed(make(), orders[: max(1, n // batch_size)])

    store_files = _files_under(Path(store_path))
    return ReadRates(store=warm(store_reader), memmap=warm(memmap_reader), first_store=first(store_reader),
                     first_memmap=first(memmap_reader), cold_store=cold(store_reader, store_files), cold_memmap=cold(memmap_reader, list(memmap_paths.values())))


def feature_bytes(store_path: str) -> float:
    store = open_store(store_path)
    total = sum(directory_bytes(str(Path(store_path) / p)) or 0 for p in (layout.FEATURES, layout.VIEWS)
                if (Path(store_path) / p).exists())
    return total / store.n_tiles


def bench_one(name: str, sample: str, images: np.ndarray, batch_size: int, device: str, dtype: str, codec: str,
              scratch: Path, rounds: int = 5) -> ExtractBenchRow:
    preset = resolve_preset(name)
    pretrained = preset.package is not None  # real weights where they ship offline; seeded random elsewhere
    settings = EncoderSettings(name=name, pretrained=pretrained)
    encoder = FrozenEncoder(settings, device=pick_device(device))
    dataset = open_dataset(sample)
    encode_rates, extract_rates, intra_rates, ratios, intra_ratios = [], [], [], [], []
    store_path = ""
    for attempt in range(rounds):
        # Rounds in alternating order, reported as medians: the machine is shared and its speed drifts, and
        # measurements taken back to back see the same machine.
        if store_path:
            shutil.rmtree(store_path)
        store_path = str(scratch / f"{name.replace('/', '_')}-{dtype}-{codec}-{attempt}.zarr")
        steps = ["encode", "extract", "intra"] if attempt % 2 == 0 else ["intra", "extract", "encode"]
        measured = {}
        for step in steps:
            if step == "encode":
                measured[step] = bare_encoder_rate(encoder, images, batch_size)
            elif step == "intra":
                measured[step] = bare_encoder_rate(encoder, images, batch_size, replicas=1)
            else:
                measured[step] = extraction_rate(dataset, encoder, store_path, batch_size, dtype, codec)
        encode_rates.append(measured["encode"])
        extract_rates.append(measured["extract"])
        intra_rates.append(measured["intra"])
        ratios.append(measured["extract"] / measured["encode"])
        intra_ratios.append(measured["extract"] / measured["intra"])
    reads = read_rates(store_path, scratch, batch_size)
    disk_mb = disk_write_rate(scratch)
    raw = sum(layer.channels * layer.height * layer.width * 4 for layer in encoder.description.layers)
    return ExtractBenchRow(
        encoder=name, weights=encoder.description.weights_source.split(":")[0], device=str(encoder.device), dtype=dtype,
        codec=codec, tiles=len(images), replicas=replica_count(encoder.device),
        encoder_tiles_per_s=statistics.median(encode_rates),
        extract_tiles_per_s=statistics.median(extract_rates), extract_over_encoder=statistics.median(ratios),
        intra_op_encoder_tiles_per_s=statistics.median(intra_rates),
        extract_over_intra_op=statistics.median(intra_ratios),
        feature_bytes_per_tile=feature_bytes(store_path),
        raw_float32_bytes_per_tile=raw, read_tiles_per_s=reads.store, memmap_tiles_per_s=reads.memmap,
        read_over_memmap=reads.store / reads.memmap, first_read_tiles_per_s=reads.first_store,
        first_read_over_memmap=reads.first_store / reads.first_memmap, cold_read_tiles_per_s=reads.cold_store,
        cold_memmap_tiles_per_s=reads.cold_memmap, cold_read_over_memmap=reads.cold_store / reads.cold_memmap,
        disk_write_mb_per_s=disk_mb,
        disk_cap_tiles_per_s=disk_mb * 1e6 / ((directory_bytes(store_path) or 1) / len(images)),
    )


def format_rows(rows: Sequence[ExtractBenchRow]) -> str:
    header = (f"{'encoder':<28} {'dtype':<7} {'codec':<9} {'enc t/s':>8} {'extr t/s':>8} {'extr/enc':>8} "
              f"{'1x t/s':>7} {'extr/1x':>7} "
              f"{'KiB/tile':>9} {'vs f32':>7} {'read t/s':>9} {'mmap t/s':>9} {'read/mmap':>9} {'1st r/m':>7} "
              f"{'cold read':>9} {'cold mmap':>9} {'cold r/m':>8} {'disk cap':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.encoder + ' (' + r.weights + ')':<28} {r.dtype:<7} {r.codec:<9} {r.encoder_tiles_per_s:8.2f} "
            f"{r.extract_tiles_per_s:8.2f} {r.extract_over_encoder:8.2f} {r.intra_op_encoder_tiles_per_s:7.2f} "
            f"{r.extract_over_intra_op:7.2f} {r.feature_bytes_per_tile / 1024:9.0f} "
            f"{r.feature_bytes_per_tile / r.raw_float32_bytes_per_tile:7.2f} {r.read_tiles_per_s:9.0f} "
            f"{r.memmap_tiles_per_s:9.0f} {r.read_over_memmap:9.2f} {r.first_read_over_memmap:7.2f} {r.cold_read_tiles_per_s:9.0f} "
            f"{r.cold_memmap_tiles_per_s:9.0f} {r.cold_read_over_memmap:8.2f} {r.disk_cap_tiles_per_s:8.0f}")
    return "\n".join(lines)


def run_extract_bench(encoders: list[str], n_tiles: int = 256, batch_size: int = 8, device: str = "auto",
                      codecs: tuple[tuple[str, str], ...] = (("float16", "none"), ("float16", "zstd"),
                                                              ("float16", "blosc-lz4"), ("int8", "none")),
                      json_path: Path | None = None, rounds: int = 5) -> list[ExtractBenchRow]:
    """The bench table: every encoder with the default storage; the first one also with the other codecs."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="cellgap-bench-") as tmp:
        scratch = Path(tmp)
        sample_dir = scratch / "sample"
        sample_dir.mkdir()
        sample = write_sample(sample_dir, n_tiles)
        images = np.load(sample_dir / "images.npy")
        print(f"threads: torch {torch.get_num_threads()}, tiles {n_tiles}, batch {batch_size}, rounds {rounds} "
              "(medians; extr/enc is the median of per-round ratios)")
        print("enc: the bare forward run as extraction runs it (on a CPU, one single-threaded replica per thread); "
              "1x: one forward at a time on all threads")
        for position, name in enumerate(encoders):
            choices = codecs if position == 0 else codecs[:1]
            for dtype, codec in choices:
                rows.append(bench_one(name.strip(), sample, images, batch_size, device, dtype, codec, scratch, rounds))
                print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    report_rows(rows, format_rows, json_path)
    return rows
