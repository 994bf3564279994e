"""Commands of the decoder package: train, predict and their benchmarks."""
from __future__ import annotations

import argparse
from pathlib import Path

from cellgap.core.clitools import positive_int


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    _register_train(commands)
    _register_predict(commands)
    _register_bench(bench)


def _register_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a decoder straight from a feature store",
                                 description="Train a CISCA-style decoder on a store's train split, validating on "
                                             "its valid split. Settings come from --config YAML and/or flags.")
    parser.add_argument("--config", type=Path, help="YAML file with the same fields as the flags")
    parser.add_argument("--store", help="feature store (from `cellgap extract`)")
    parser.add_argument("--out", type=Path, help="run directory")
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--optimizer", choices=("adamw", "adam"))
    parser.add_argument("--schedule", choices=("onecycle", "plateau"))
    parser.add_argument("--augment", choices=("none", "d4", "views"))
    parser.add_argument("--decoder", choices=("small", "base"), help="decoder widths (small: CPU-friendly)")
    parser.add_argument("--stain-jitter", type=float, metavar="S",
                        help="H&E stain jitter of the image skip: each stain's density scaled by 1 +- S, shifted by +- S/4")
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="validate and save a moving average of the weights with this decay (0: off)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--val-every", type=positive_int, help="validate every N epochs")
    parser.add_argument("--best-metric", choices=("auto", "pq", "mpq_plus", "f1_d", "aji", "dice1"))
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from cellgap.decoder.training.config import load_train_config
    from cellgap.decoder.training.loop import train

    overrides = {
        "store": args.store, "out": args.out, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "optimizer": args.optimizer, "schedule": args.schedule, "augment": args.augment, "decoder": args.decoder,
        "stain_jitter": args.stain_jitter, "ema": args.ema, "device": args.device, "seed": args.seed, "val_every": args.val_every, "best_metric": args.best_metric,
        "resume": args.resume or None, "progress": False if args.no_progress else None,
    }
    config = load_train_config(args.config, overrides)
    result = train(config)
    best = "n/a" if result.best_value is None else f"{result.best_value:.4f}"
    print(f"{result.run_dir}: {result.epochs_run} epochs ({result.seconds_per_epoch:.1f} s each); best valid "
          f"{result.best_metric} {best} at epoch {result.best_epoch}; decoder {result.parameters / 1e6:.2f}M parameters, "
          f"{result.gflops_per_tile:.2f} GFLOP/tile; curves in {result.run_dir / 'curves.png'}")
    return 0


def _register_predict(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help="predict cells with a trained run (store split or image files)")
    parser.add_argument("--run", type=Path, required=True, help="run directory from `cellgap train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="predict from stored features (no encoder run)")
    source.add_argument("--images", type=Path, help="image file or folder; encoded on the fly, any size")
    parser.add_argument("--split", default="test", help="split of --store to predict: train|valid|test|all (default test)")
    parser.add_argument("--out", type=Path, required=True, help="prediction folder")
    parser.add_argument("--weights", type=Path, help="local encoder checkpoint when the run's weights are elsewhere")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from cellgap.decoder.predict import predict_images, predict_store

    if args.store:
        split = None if args.split == "all" else args.split
        summary = predict_store(args.run, args.store, split, args.out, device=args.device, batch_size=args.batch_size,
                                progress=not args.no_progress)
        gt = f"store:{args.store}" + ("" if split is None else f",split={split}")
    else:
        summary = predict_images(args.run, args.images, args.out, device=args.device, weights=args.weights,
                                 batch_size=args.batch_size, progress=not args.no_progress)
        gt = "FORMAT:GROUND_TRUTH"
    for line in summary.lines():
        print(line)
    print(f"score it: cellgap evaluate --gt {gt} --pred folder:{args.out}")
    return 0


def _register_bench(bench: argparse._SubParsersAction) -> None:
    parser = bench.add_parser("train", help="training from the store vs encoder on the fly vs tensors in memory")
    parser.add_argument("--encoders", default="imagenet/efficientnet_lite0,convnext_base",
                        help="comma-separated: a small and a base-sized encoder by default")
    parser.add_argument("--tiles", type=positive_int, default=32)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--epochs", type=positive_int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    parser.set_defaults(handler=_bench_train)


def _bench_train(args: argparse.Namespace) -> int:
    from cellgap.decoder.bench import run_train_bench

    run_train_bench(args.encoders.split(","), n_tiles=args.tiles, batch_size=args.batch_size, epochs=args.epochs,
                    device=args.device, json_path=args.json)
    return 0
