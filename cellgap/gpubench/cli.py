"""The `bench gpu` subcommand."""
from __future__ import annotations

import argparse
from pathlib import Path

from cellgap.core.clitools import at_least, positive_int


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from cellgap.gpubench.run import PANNUKE_TILES

    parser = bench.add_parser("gpu", help="the GPU path: extraction against its limits, post-processing pool")
    parser.add_argument("--encoders", default="convnext_base,vit_large_patch16_224",
                        help="comma-separated, random weights (default ConvNeXt-B and ViT-L)")
    parser.add_argument("--dtypes", default="float16,int8", help="stored dtypes (default float16,int8)")
    parser.add_argument("--tiles", type=positive_int, default=PANNUKE_TILES,
                        help=f"synthetic 256 px tiles (default {PANNUKE_TILES}, PanNuke's count)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="tiles per forward pass (default 64)")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (a smoke run with small --tiles)")
    parser.add_argument("--workers", type=at_least(0, 64), default=4,
                        help="post-processing processes to time (default 4)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the result as JSON")
    parser.set_defaults(handler=_bench_gpu)


def _bench_gpu(args: argparse.Namespace) -> int:
    from cellgap.gpubench.run import run_gpu_bench

    run_gpu_bench(args.encoders.split(","), args.dtypes.split(","), args.tiles, args.batch_size, args.device,
                  args.workers, args.json)
    return 0
