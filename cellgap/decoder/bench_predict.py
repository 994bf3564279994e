"""`cellgap bench predict`: does predicting image files cost no more than its parts?

Image files must be read, encoded, decoded, post-processed and written; a store already holds the
encoder's features. So predicting N tile files should take about what predicting the same N tiles
from a store takes plus the encoder's own forward passes over them. The bench times the three on
the same tiles, with one loaded model, in alternating order over a few rounds, and reports
(store time + encoder time) / file time: 1.0 means nothing is lost to reading, batching or waiting;
the goal is at least 0.8.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cellgap.core.benchtools import report_rows
from cellgap.core.stages import StageClock
from cellgap.decoder.predict import predict_images, predict_store
from cellgap.decoder.predictor import Predictor, encoder_settings_for

STAGES = ("read", "encode", "decode", "postprocess", "write")


@dataclass
class PredictBenchRow:
    run: str
    encoder: str
    device: str
    tiles: int
    batch_size: int
    rounds: int
    images_tiles_per_s: float
    store_tiles_per_s: float
    encoder_tiles_per_s: float
    parts_over_images: float  # (store seconds + encoder seconds) / image-file seconds, median of the rounds
    stage_seconds: dict[str, float]  # of the image-file path, summed over rounds (threads overlap)
    slowest_stage: str


def write_tiles(folder: Path, n_tiles: int, tile_size: int) -> Path:
    """Synthetic H&E-like tiles as PNG files, the way users hand tiles to `predict --images`."""
    from PIL import Image

    from cellgap.featurestore.datasets.synthetic import make_tile

    images = folder / "images"
    images.mkdir(parents=True)
    for seed in range(n_tiles):
        Image.fromarray(make_tile(seed, size=tile_size).image).save(images / f"tile_{seed:05d}.png")
    return images


def run_predict_bench(run: Path, n_tiles: int, batch_size: int, rounds: int, device: str,
                      json_path: Path | None) -> PredictBenchRow:
    from PIL import Image

    from cellgap.featurestore.extract.config import ExtractConfig
    from cellgap.featurestore.extract.job import run_extraction

    predictor = Predictor.from_run(run, device=device)
    manifest = predictor.checkpoint.manifest
    with tempfile.TemporaryDirectory(prefix="cellgap-bench-predict-") as scratch:
        root = Path(scratch)
        images = write_tiles(root / "tiles", n_tiles, predictor.tile_size)
        store = str(root / "tiles.zarr")
        print(f"extracting {n_tiles} tiles with {manifest.encoder.name} into a scratch store", flush=True)
        run_extraction(ExtractConfig(dataset=f"folder:{root / 'tiles'}", store=store,
                                     encoder=encoder_settings_for(manifest), magnification=manifest.dataset.magnification,
                                     batch_size=batch_size, progress=False))
        tiles = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sorted(images.iterdir())])
        seconds: dict[str, list[float]] = {"images": [], "store": [], "encoder": []}
        clock = StageClock()
        for attempt in range(rounds):
            order = ["images", "store", "encoder"] if attempt % 2 == 0 else ["encoder", "store", "images"]
            for step in order:
                started = time.perf_counter()
                if step == "images":
                    predict_images(run, images, root / "out-images", batch_size=batch_size, progress=False,
                                   overwrite=True, clock=clock, predictor=predictor)
                elif step == "store":
                    predict_store(run, store, None, root / f"out-store-{attempt}", batch_size=batch_size,
                                  progress=False, predictor=predictor)
                else:
                    _encode_all(predictor, tiles, batch_size)
                seconds[step].append(time.perf_counter() - started)
    ratios = [(s + e) / i for i, s, e in zip(seconds["images"], seconds["store"], seconds["encoder"])]
    stages = {stage: round(clock.seconds().get(stage, 0.0), 3) for stage in STAGES}
    row = PredictBenchRow(
        run=str(run), encoder=manifest.encoder.name, device=str(predictor.device), tiles=n_tiles,
        batch_size=batch_size, rounds=rounds,
        images_tiles_per_s=round(n_tiles / statistics.median(seconds["images"]), 2),
        store_tiles_per_s=round(n_tiles / statistics.median(seconds["store"]), 2),
        encoder_tiles_per_s=round(n_tiles / statistics.median(seconds["encoder"]), 2),
        parts_over_images=round(statistics.median(ratios), 3), stage_seconds=stages,
        slowest_stage=max(stages, key=lambda s: stages[s]))
    report_rows([row], format_rows, json_path)
    return row


def _encode_all(predictor: Predictor, tiles: np.ndarray, batch_size: int) -> None:
    """The encoder's forward passes alone, as `predict --images` runs them (same encoder object, same batches)."""
    encoder = predictor.encoder
    assert encoder is not None  # loaded with its encoder above
    with torch.inference_mode():
        for start in range(0, len(tiles), batch_size):
            encoder(torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch_size])).to(predictor.device))


def format_rows(rows: list[PredictBenchRow]) -> str:
    lines = [f"{'encoder':<28} {'device':<6} {'tiles':>5} {'files t/s':>9} {'store t/s':>9} {'enc t/s':>8} "
             f"{'(store+enc)/files':>17}  stages of the file path (s)"]
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stage_seconds.items())
        lines.append(f"{r.encoder:<28} {r.device:<6} {r.tiles:>5} {r.images_tiles_per_s:9.1f} "
                     f"{r.store_tiles_per_s:9.1f} {r.encoder_tiles_per_s:8.1f} {r.parts_over_images:17.2f}  "
                     f"{stages}; slowest: {r.slowest_stage}")
    return "\n".join(lines)
