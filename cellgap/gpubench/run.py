"""What `cellgap bench gpu` measures, in one run on synthetic tiles at PanNuke's size and count.

Extraction: tiles/s of the whole path over min(bare encoder tiles/s, the disk's fsync'd MB/s / bytes per tile),
per encoder (random weights) and stored dtype. Post-processing: tiles/s in one process and on the pool, over
the decoder-sized budget that the encoder's forward pass sets. Training (issue item 3) is not measured yet.
A CUDA device is required unless `--device cpu` is given for a small smoke run, which is labelled as such.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cellgap.core.errors import CellgapError
from cellgap.core.version import cellgap_version

PANNUKE_TILES = 7901
PANNUKE_SIDE = 256


class BenchDeviceError(CellgapError):
    """The GPU bench asked to run where it cannot."""


@dataclass
class ExtractionRow:
    encoder: str
    dtype: str
    tiles: int
    encoder_tiles_per_s: float
    extract_tiles_per_s: float
    disk_cap_tiles_per_s: float
    extract_over_limit: float  # the goal is >= 0.9


@dataclass
class PostprocessRow:
    tiles: int
    workers: int
    in_process_tiles_per_s: float
    pool_tiles_per_s: float
    pool_over_in_process: float


def check_device(device: str, tiles: int, smoke_limit: int = 64) -> str:
    """cuda when present; cpu only when asked for explicitly, with a small --tiles (a smoke run, not a result)."""
    import torch

    if device == "cpu":
        if tiles > smoke_limit:
            raise BenchDeviceError(f"bench gpu --device cpu is a smoke run: pass --tiles {smoke_limit} or fewer")
        return "cpu"
    if not torch.cuda.is_available():
        raise BenchDeviceError("bench gpu needs a CUDA device (or --device cpu --tiles N for a smoke run)")
    return device if device.startswith("cuda") else "cuda"


def extraction_rows(encoders: list[str], dtypes: list[str], tiles: int, batch_size: int, device: str,
                    scratch: Path) -> list[ExtractionRow]:
    from cellgap.featurestore.bench import bare_encoder_rate, disk_write_rate, extraction_rate, feature_bytes
    from cellgap.featurestore.datasets import open_dataset
    from cellgap.featurestore.encoders.encoder import EncoderSettings, FrozenEncoder, pick_device

    dataset = open_dataset(f"synthetic:{tiles},seed=0", tile_size=PANNUKE_SIDE)
    images = np.stack([dataset[i].image for i in range(tiles)])
    disk_mb_s = disk_write_rate(scratch, megabytes=64 if device == "cpu" else 1024)
    rows = []
    for name in encoders:
        encoder = FrozenEncoder(EncoderSettings(name=name, pretrained=False), device=pick_device(device))
        bare = bare_encoder_rate(encoder, images, batch_size, replicas=1 if device != "cpu" else None)
        for dtype in dtypes:
            store = scratch / f"{name.replace('/', '_')}-{dtype}.zarr"
            rate = extraction_rate(dataset, encoder, str(store), batch_size, dtype, "none")
            cap = disk_mb_s * 1e6 / feature_bytes(str(store))
            rows.append(ExtractionRow(name, dtype, tiles, bare, rate, cap, rate / min(bare, cap)))
    return rows


def postprocess_row(tiles: int, workers: int) -> PostprocessRow:
    """Tiles/s of post-processing the ideal maps of synthetic tiles, in one process and on the pool."""
    from cellgap.decoder.inference import TileMaps, instances_of
    from cellgap.decoder.postpool import PostprocessPool
    from cellgap.decoder.postprocess import PostprocessConfig
    from cellgap.decoder.targets import TargetConfig, compute_targets, one_hot
    from cellgap.featurestore.datasets.synthetic import make_tile

    maps = []
    for seed in range(tiles):
        tile = make_tile(seed, size=PANNUKE_SIDE, n_classes=5)
        targets = compute_targets(tile.instances, tile.classes, TargetConfig(magnification=40))
        maps.append(TileMaps(one_hot(targets.sm1, 3).astype(np.float32), targets.ddm.astype(np.float32),
                             one_hot(targets.classes, 6).astype(np.float32)))
    config = PostprocessConfig.preset("pannuke")
    started = time.perf_counter()
    for m in maps:
        instances_of(m, config)
    single = tiles / (time.perf_counter() - started)
    with PostprocessPool(config, workers) as pool:
        list(pool.map(maps[: max(1, workers)]))  # workers started and warm
        started = time.perf_counter()
        list(pool.map(maps))
        pooled = tiles / (time.perf_counter() - started)
    return PostprocessRow(tiles, workers, single, pooled, pooled / single)


def run_gpu_bench(encoders: list[str], dtypes: list[str], tiles: int, batch_size: int, device: str,
                  workers: int, json_path: Path | None) -> dict:
    device = check_device(device, tiles)
    with tempfile.TemporaryDirectory(prefix="cellgap-bench-gpu-") as folder:
        extraction = extraction_rows(encoders, dtypes, tiles, batch_size, device, Path(folder))
    post = postprocess_row(min(tiles, 256), workers)
    result = {"cellgap_version": cellgap_version(), "device": device, "smoke_run": device == "cpu",
              "measured": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "extraction": [asdict(r) for r in extraction], "postprocess": asdict(post),
              "training": "not measured yet"}
    label = " (CPU smoke run: not a GPU result)" if device == "cpu" else ""
    print(f"cellgap {result['cellgap_version']} on {device}{label}")
    print(f"{'encoder':<28} {'dtype':<8} {'encoder t/s':>11} {'extract t/s':>11} {'disk cap t/s':>12} {'ratio':>6}")
    for r in extraction:
        print(f"{r.encoder:<28} {r.dtype:<8} {r.encoder_tiles_per_s:11.1f} {r.extract_tiles_per_s:11.1f} "
              f"{r.disk_cap_tiles_per_s:12.1f} {r.extract_over_limit:6.2f}")
    print(f"post-processing: {post.in_process_tiles_per_s:.1f} tiles/s in one process, {post.pool_tiles_per_s:.1f} "
          f"on {post.workers} workers ({post.pool_over_in_process:.2f}x)")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
    return result
