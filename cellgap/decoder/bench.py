"""`cellgap bench train`: what the store buys (encoder on the fly vs stored features) and what reading it costs.

In one run, on the same tiles, batch size, epochs and decoder: (a) training from the store exactly as
`train` reads it (its loader, shuffled, D4-augmented, the same loader threads), (b) the frozen encoder
run on every batch, (c) the decoder alone on tensors already in memory (one epoch of (a)'s batches,
kept). Every path gets the same number of timed runs, in alternating order, reported as medians.
Also post-processing time per tile against the decoder's forward time.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cellgap.core.benchtools import report_rows
from cellgap.decoder.inference import TileMaps, forward_probabilities, instances_of, postprocess_preset, split_tiles
from cellgap.decoder.losses import CiscaLoss
from cellgap.decoder.lossweights import LossWeights
from cellgap.decoder.networks import CellDecoder, DecoderConfig, network_spec, on_device
from cellgap.decoder.targets import one_hot
from cellgap.decoder.targets_cache import TargetCache, target_config_for
from cellgap.decoder.training.config import TrainConfig
from cellgap.decoder.training.loop import training_batches
from cellgap.featurestore.encoders.encoder import EncoderSettings, FrozenEncoder, pick_device
from cellgap.featurestore.encoders.registry import resolve_preset
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.job import run_extraction
from cellgap.featurestore.store.reader import open_store


@dataclass
class TrainBenchRow:
    encoder: str
    device: str
    tiles: int
    epochs: int
    rounds: int
    store_s_per_epoch: float
    on_the_fly_s_per_epoch: float
    in_memory_s_per_epoch: float
    on_the_fly_over_store: float
    store_over_in_memory: float
    postprocess_ms_per_tile: float
    decoder_forward_ms_per_tile: float
    postprocess_over_forward: float


def _model(store, device: torch.device) -> tuple[CellDecoder, list[str]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = network_spec(store.layers, store.manifest.encoder.family, store.manifest.dataset.tile_size,
                            len(store.class_names), DecoderConfig())
        model = on_device(CellDecoder(spec), device)
    return model, [p.name for p in spec.layers]


def _step(model, optimiser, criterion, features, image, sm1, ddm, classes, weight) -> None:
    loss, _ = criterion(model(features, image), sm1, ddm, classes, weight)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def _timed_epochs(run_epoch: Callable[[int], None], first: int, epochs: int, device: torch.device) -> float:
    """Seconds per epoch over `epochs` epochs numbered from `first` (each epoch shuffles and augments anew)."""
    started = time.perf_counter()
    for epoch in range(first, first + epochs):
        run_epoch(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / epochs


def bench_encoder(name: str, scratch: Path, n_tiles: int, batch_size: int, epochs: int, device_name: str,
                  rounds: int = 2) -> TrainBenchRow:
    device = pick_device(device_name)
    settings = EncoderSettings(name=name, pretrained=resolve_preset(name).package is not None)
    store_path = str(scratch / f"{name.replace('/', '_')}.zarr")
    run_extraction(ExtractConfig(dataset=f"synthetic:{n_tiles}", store=store_path, encoder=settings, device=device_name,
                                 progress=False))
    store = open_store(store_path)
    indices = store.indices()
    targets = TargetCache(store, target_config_for(store))
    targets.ensure(indices, progress=False)
    model, layer_names = _model(store, device)
    config = TrainConfig(store=store_path, out=scratch / "run", batch_size=batch_size, device=device_name)
    batches = training_batches(store, layer_names, indices, targets, config, device)
    criterion = CiscaLoss(LossWeights(), with_classes=model.spec.n_classes > 0).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def from_store(epoch: int) -> None:
        for batch in batches.epoch(epoch):
            _step(model, optimiser, criterion, batch.features, batch.image, batch.sm1, batch.ddm, batch.classes, batch.weight)

    resident = [batch for batch in batches.epoch(0)]  # (c): every tensor already in memory on the device

    def in_memory(epoch: int) -> None:
        for batch in resident:
            _step(model, optimiser, criterion, batch.features, batch.image, batch.sm1, batch.ddm, batch.classes, batch.weight)

    encoder = FrozenEncoder(settings, device=device)
    order = [layer.name for layer in encoder.description.layers]

    def on_the_fly(epoch: int) -> None:
        for batch in resident:
            tiles = torch.from_numpy(store.read_images(batch.indices)).to(device)
            maps = encoder(tiles)
            features = [maps[order.index(n)].clone() for n in layer_names]  # inference tensors cannot enter autograd
            _step(model, optimiser, criterion, features, batch.image, batch.sm1, batch.ddm, batch.classes, batch.weight)

    paths = {"store": from_store, "fly": on_the_fly, "memory": in_memory}
    for run_epoch in paths.values():
        run_epoch(0)  # one warm-up epoch each (allocator, kernels, page cache)
    timings: dict[str, list[float]] = {label: [] for label in paths}
    for round_ in range(rounds):
        sequence = list(paths) if round_ % 2 == 0 else list(reversed(paths))
        for label in sequence:
            timings[label].append(_timed_epochs(paths[label], 1 + round_ * epochs, epochs, device))
    store_s, fly_s, memory_s = (statistics.median(timings[label]) for label in ("store", "fly", "memory"))
    forward_ms, post_ms = _postprocess_ratio(model, resident, store, targets)
    return TrainBenchRow(
        encoder=name, device=str(device), tiles=len(indices), epochs=epochs, rounds=rounds, store_s_per_epoch=store_s,
        on_the_fly_s_per_epoch=fly_s, in_memory_s_per_epoch=memory_s,
        on_the_fly_over_store=fly_s / store_s, store_over_in_memory=store_s / memory_s,
        postprocess_ms_per_tile=post_ms, decoder_forward_ms_per_tile=forward_ms, postprocess_over_forward=post_ms / forward_ms)


def _postprocess_ratio(model: CellDecoder, resident, store, targets: TargetCache) -> tuple[float, float]:
    """Decoder forward ms per tile (to host memory) and post-processing ms per tile.

    The bench's decoder is barely trained, and post-processing of noise is not what a user runs,
    so post-processing is timed on the maps of a perfect model: one-hot SM1 and SM2 and the true
    distance maps of each tile.
    """
    model.eval()
    config = postprocess_preset(store.manifest.dataset.format, store.magnification)
    forward_probabilities(model, resident[0].features, resident[0].image)
    tiles, forward_s, post_s = 0, 0.0, 0.0
    n_classes = model.spec.n_classes
    for batch in resident:
        started = time.perf_counter()
        probabilities = forward_probabilities(model, batch.features, batch.image)
        if batch.image.device.type == "cuda":
            torch.cuda.synchronize()
        split_tiles(probabilities)
        forward_s += time.perf_counter() - started
        truth = targets.read(batch.indices)
        for k in range(len(batch.indices)):
            ideal = TileMaps(one_hot(truth.sm1[k], 3), truth.ddm[k],
                             one_hot(truth.classes[k], n_classes + 1) if n_classes else None)
            started = time.perf_counter()
            instances_of(ideal, config)
            post_s += time.perf_counter() - started
        tiles += len(batch.indices)
    model.train()
    return 1000 * forward_s / tiles, 1000 * post_s / tiles


def format_rows(rows: list[TrainBenchRow]) -> str:
    header = (f"{'encoder':<28} {'store s/ep':>10} {'fly s/ep':>9} {'mem s/ep':>9} {'fly/store':>9} {'store/mem':>9} "
              f"{'post ms':>8} {'fwd ms':>7} {'post/fwd':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.encoder:<28} {r.store_s_per_epoch:10.2f} {r.on_the_fly_s_per_epoch:9.2f} "
                     f"{r.in_memory_s_per_epoch:9.2f} {r.on_the_fly_over_store:9.2f} {r.store_over_in_memory:9.2f} "
                     f"{r.postprocess_ms_per_tile:8.1f} {r.decoder_forward_ms_per_tile:7.1f} {r.postprocess_over_forward:8.2f}")
    lines.append("* post-processing of a perfect model's maps (one-hot SM1/SM2, true distance maps)")
    return "\n".join(lines)


def run_train_bench(encoders: list[str], n_tiles: int = 32, batch_size: int = 8, epochs: int = 2, device: str = "auto",
                    json_path: Path | None = None, rounds: int = 2) -> list[TrainBenchRow]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cellgap-bench-train-") as tmp:
        print(f"threads: torch {torch.get_num_threads()}, tiles {n_tiles}, batch {batch_size}, {rounds} rounds of "
              f"{epochs} epochs per path (+1 warm-up each); medians; the store read as `train` reads it")
        for name in encoders:
            rows.append(bench_encoder(name.strip(), Path(tmp), n_tiles, batch_size, epochs, device, rounds))
            print(format_rows(rows[-1:]).splitlines()[2], flush=True)  # the row, under the header and its rule
    report_rows(rows, format_rows, json_path)
    return rows
