"""Commands of the feature store: `extract`, `store info`, `store verify`, `encoders`, and `bench extract`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cellgap.core.clitools import add_device_option, at_least, parse_bool, positive_float, positive_int
from cellgap.core.limits import MAX_SEED, MAX_TILE_SIDE


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    _register_extract(commands)
    _register_store(commands)
    encoders = commands.add_parser("encoders", help="list the encoder presets")
    encoders.set_defaults(handler=_encoders)
    _register_bench(bench)


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """Encoder flags shared by every command that builds an encoder."""
    parser.add_argument("--encoder", required=True, help="preset (see `cellgap encoders`), timm name or hf-hub:org/repo")
    parser.add_argument("--pretrained", type=parse_bool, default=True, metavar="true|false",
                        help="load pretrained weights (default true); false = seeded random weights")
    parser.add_argument("--weights", type=Path, help="local checkpoint (.safetensors/.pth) instead of downloading")
    parser.add_argument("--seed", type=at_least(0, MAX_SEED), default=0, help="seed of random weights (default 0)")
    parser.add_argument("--layers", default="default", type=_layer_spec,
                        help="default | all | shallow | deep | mixed (ViTs) | indices like 2,5,8,11")
    parser.add_argument("--tile-size", type=at_least(32, MAX_TILE_SIDE), default=256,
                        help=f"tile side in pixels, 32 to {MAX_TILE_SIDE} (default 256)")
    parser.add_argument("--input-size", type=at_least(32, MAX_TILE_SIDE),
                        help=f"side fed to the model, 32 to {MAX_TILE_SIDE} (default: tile size, or a 16x16 grid for "
                             "patch-14 ViTs)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="the encoder's compute precision, recorded in the store's manifest (a store never mixes "
                             "two; a run reads only its own): auto = bf16 on CUDA devices that have it, else fp32")


def _layer_spec(text: str) -> str:
    """The form of `--layers`, checked while parsing: a typo fails before any encoder is built."""
    from cellgap.featurestore.encoders.layers import parse_layer_spec
    from cellgap.featurestore.errors import EncoderError

    try:
        parse_layer_spec(text)
    except EncoderError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def encoder_settings(args: argparse.Namespace):
    """The encoder flags as settings; a ViT strategy on a hierarchical preset is refused here, unbuilt."""
    from cellgap.featurestore.encoders.description import EncoderSettings
    from cellgap.featurestore.encoders.layers import check_layers_for_family
    from cellgap.featurestore.encoders.registry import resolve_preset

    check_layers_for_family(args.layers, resolve_preset(args.encoder).family)
    return EncoderSettings(name=args.encoder, pretrained=args.pretrained, weights=args.weights, seed=args.seed,
                           layers=args.layers, tile_size=args.tile_size, input_size=args.input_size,
                           precision=args.precision)


def _register_extract(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("extract", help="run a frozen encoder over a data set into a feature store")
    parser.add_argument("--dataset", required=True, help="FORMAT:PATH with FORMAT pannuke|conic|cytodark0|folder|slides|synthetic "
                             "(slides:PATH[,mpp=M][,tissue=F]: the tissue tiles of a slide or a folder of slides)")
    parser.add_argument("--store", required=True, help="output store (folder or fsspec URL)")
    add_encoder_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, help="tiles per encoder forward pass (default 8)")
    add_device_option(parser)
    parser.add_argument("--replicas", type=positive_int,
                        help="CPU only: encoder replicas sharing torch's threads, each on its own batches "
                             "(default: one single-threaded replica per thread)")
    parser.add_argument("--dtype", choices=("float16", "float32", "int8"), default="float16",
                        help="stored feature precision (int8: per-channel scales; default float16)")
    parser.add_argument("--codec", choices=("none", "zstd", "blosc-lz4"), default="none",
                        help="feature compression (default none: see docs/benchmarks.md)")
    parser.add_argument("--shard-tiles", type=positive_int, default=32, help="tiles per shard file (default 32)")
    parser.add_argument("--views", choices=("none", "flips", "d4"), default="none",
                        help="also store features of flipped/rotated tiles for augmentation")
    parser.add_argument("--split-seed", type=at_least(0, MAX_SEED), default=0, help="seed of the split for data sets without one")
    parser.add_argument("--magnification", type=int, choices=(20, 40),
                        help="objective magnification of a data set that does not know its own (folder:), or to "
                             "read slides at (slides:, default their own); sets targets, post-processing and F1_d. "
                             "Unknown: 40x is assumed, said and recorded")
    parser.add_argument("--mpp", type=positive_float, help="microns per pixel, recorded in the manifest")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, help="run on a local dask cluster of N worker processes")
    where.add_argument("--scheduler", help="dask scheduler address (tcp://host:8786)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_extract)


def _extract(args: argparse.Namespace) -> int:
    from cellgap.featurestore.extract.config import ExtractConfig
    from cellgap.featurestore.extract.job import run_extraction

    config = ExtractConfig(
        dataset=args.dataset, store=args.store, encoder=encoder_settings(args), batch_size=args.batch_size,
        device=args.device, replicas=args.replicas, dtype=args.dtype, codec=args.codec, shard_tiles=args.shard_tiles,
        views=args.views, split_seed=args.split_seed, magnification=args.magnification, mpp=args.mpp, workers=args.workers, scheduler=args.scheduler,
        progress=not args.no_progress,
    )
    summary = run_extraction(config)
    for line in summary.lines():
        print(line)
    return 0


def _register_store(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("store", help="inspect feature stores")
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True, parser_class=type(parser))
    info = sub.add_parser("info", help="manifest, arrays, bytes and completion of a store")
    info.add_argument("store", help="store folder or URL")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_store_info)
    verify = sub.add_parser("verify", help="read every chunk and pixel of a store and name the damaged tiles "
                                           "(exit 1 when any is damaged)")
    verify.add_argument("store", help="store folder or URL")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify.set_defaults(handler=_store_verify)


def _store_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cellgap.featurestore.store.reader import open_store
    from cellgap.featurestore.store.verify import format_report, verify_store

    store = open_store(args.store)
    report = verify_store(store, progress=not args.no_progress)
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok, "damaged_tiles": report.damaged_tiles}, indent=2))
    else:
        try:
            names = store.names
        except Exception:  # noqa: BLE001 (a damaged name array is in the report already)
            names = None
        print(format_report(report, names))
    return 0 if report.ok else 1


def _store_info(args: argparse.Namespace) -> int:
    from cellgap.featurestore.store.info import describe, format_info
    from cellgap.featurestore.store.reader import open_store

    info = describe(open_store(args.store))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _encoders(args: argparse.Namespace) -> int:
    from cellgap.featurestore.encoders.registry import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, preset in PRESETS.items():
        source = preset.pretrained_id or f"package {preset.package}"
        print(f"{name:<{width}}  {preset.family:<12}  {source}\n{'':<{width}}  {preset.description}")
    print("Any timm model name (e.g. resnet50.a1_in1k) or hf-hub:org/repo works too.", file=sys.stderr)
    return 0


def _register_bench(bench: argparse._SubParsersAction) -> None:
    parser = bench.add_parser("extract", help="extraction vs bare encoder speed, bytes per tile, read speed vs memmap")
    parser.add_argument("--encoders", default="imagenet/efficientnet_lite0,convnext_base",
                        help="comma-separated encoders (a small and a base-sized one by default)")
    parser.add_argument("--tiles", type=positive_int, default=256,
                        help="synthetic tiles to extract (default 256: 8 shards, so the steady state dominates)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="tiles per encoder forward pass (default 8)")
    add_device_option(parser)
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="paired bare/extraction rounds per row, reported as medians (default 5: single "
                             "rounds on a shared machine vary by a few points)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.set_defaults(handler=_bench_extract)


def _bench_extract(args: argparse.Namespace) -> int:
    from cellgap.featurestore.bench import run_extract_bench

    run_extract_bench(args.encoders.split(","), n_tiles=args.tiles, batch_size=args.batch_size, device=args.device,
                      json_path=args.json, rounds=args.rounds)
    return 0
