"""Commands of the decoder package: train, predict and their benchmarks."""
from __future__ import annotations

import argparse
from pathlib import Path

from cellgap.core.clitools import (
    add_device_option,
    add_model_flags,
    at_least,
    model_overrides,
    positive_float,
    positive_int,
    unit_interval,
)
from cellgap.core.limits import MAX_IMAGE_PIXELS
from cellgap.decoder.errors import PredictionError

# TrainConfig fields that are flags of `train` (the loss weights are set in the YAML config)
TRAIN_FLAGS: tuple[str, ...] = (
    "store", "out", "name", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "augment",
    "decoder", "stain_jitter", "ema", "device", "seed", "val_every", "best_metric", "early_stopping", "postprocess",
    "tune_postprocess", "train_split", "valid_split", "loader_threads")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    _register_train(commands)
    _register_predict(commands)
    _register_bench(bench)


def _register_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a decoder straight from a feature store",
                                 description="Train a CISCA-style decoder on a store's train split, validating on "
                                             "its valid split. Settings come from --config YAML and/or flags.")
    from cellgap.decoder.training.config import TrainConfig

    parser.add_argument("--config", type=Path, help="YAML file with the same fields as the flags (flags win)")
    add_model_flags(parser, TrainConfig, TRAIN_FLAGS)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar: one log line per epoch")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from cellgap.decoder.training.config import load_train_config
    from cellgap.decoder.training.loop import train

    overrides = {**model_overrides(args, TRAIN_FLAGS), "resume": args.resume or None,
                 "progress": False if args.no_progress else None}
    config = load_train_config(args.config, overrides)
    result = train(config)
    best = "n/a" if result.best_value is None else f"{result.best_value:.4f}"
    print(f"{result.run_dir}: {result.epochs_run} epochs ({result.seconds_per_epoch:.1f} s each); best valid "
          f"{result.best_metric} {best} at epoch {result.best_epoch}; decoder {result.parameters / 1e6:.2f}M parameters, "
          f"{result.gflops_per_tile:.2f} GFLOP/tile; curves in {result.run_dir / 'curves.png'}")
    return 0


def _register_predict(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help="predict cells with a trained run (store split, image files or "
                                                 "whole-slide images)")
    parser.add_argument("--run", type=Path, required=True, help="run directory from `cellgap train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="predict from stored features (no encoder run)")
    source.add_argument("--images", type=Path, help="image file or folder; encoded on the fly, any size")
    source.add_argument("--slides", type=Path, nargs="+", metavar="PATH",
                        help="whole-slide images (OpenSlide formats, pyramidal TIFF / OME-TIFF): every nucleus over "
                             "the tissue, as SLIDE.geojson.gz (QuPath detections), SLIDE.cells.csv and thumbnails")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test", "all"),
                        help="split of --store to predict (default test)")
    parser.add_argument("--out", type=Path, required=True, help="prediction folder")
    parser.add_argument("--weights", type=Path, help="local encoder checkpoint when the run's weights are elsewhere")
    images = parser.add_argument_group("image files (--images)")
    images.add_argument("--max-pixels", type=positive_int, default=MAX_IMAGE_PIXELS, metavar="N",
                        help="largest image (height x width) predicted, checked from each file's header before "
                             f"anything is decoded (default {MAX_IMAGE_PIXELS}, as the service's)")
    images.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (refused otherwise); outputs are written to a temporary "
                             "folder that replaces --out only when every image succeeded")
    add_device_option(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, help="tiles per forward pass (default 8)")
    parser.add_argument("--min-score", type=unit_interval, default=0.0, metavar="S",
                        help="leave out cells whose detection score (mean foreground probability) is below S "
                             "(default 0: keep every cell post-processing finds)")
    slides = parser.add_argument_group("whole-slide images (--slides)")
    slides.add_argument("--mpp", type=positive_float, help="microns per pixel at full resolution, over what the "
                                                           "slides record (needed when they record none)")
    slides.add_argument("--roi", type=_roi, metavar="X,Y,W,H", help="only this box, in full-resolution pixels")
    slides.add_argument("--region-size", type=at_least(64), default=1024, metavar="PX",
                        help="side of the regions a slide is predicted in, at the model's resolution (default 1024)")
    slides.add_argument("--labels", action="store_true",
                        help="also write SLIDE.labels.zarr, the instance labels at full resolution (ids as in the CSV)")
    slides.add_argument("--no-tissue", action="store_true", help="predict everywhere, not only over detected tissue")
    slides.add_argument("--workers", type=positive_int, metavar="N",
                        help="predict N slides at once on a local dask cluster (one slide per task)")
    slides.add_argument("--scheduler", metavar="ADDRESS",
                        help="predict on an existing dask cluster (tcp://host:8786); slides, run and --out must be "
                             "visible to every worker")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_predict)


def _roi(text: str) -> tuple[int, int, int, int]:
    from cellgap.featurestore.slides.grid import Roi

    try:
        roi = Roi.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return roi.x, roi.y, roi.width, roi.height


def _predict(args: argparse.Namespace) -> int:
    from cellgap.decoder.predict import predict_images, predict_store

    if args.slides:
        return _predict_slides(args)
    if args.workers or args.scheduler:
        raise PredictionError("--workers and --scheduler spread slides over a cluster: use them with --slides")
    if args.store:
        split = None if args.split == "all" else args.split
        summary = predict_store(args.run, args.store, split, args.out, device=args.device, batch_size=args.batch_size,
                                progress=not args.no_progress, min_score=args.min_score)
        gt = f"store:{args.store}" + ("" if split is None else f",split={split}")
    else:
        from cellgap.featurestore.datasets.imageio import allow_pil_pixels

        allow_pil_pixels(args.max_pixels)  # the limit chosen here is the one applied, not PIL's own
        summary = predict_images(args.run, args.images, args.out, device=args.device, weights=args.weights,
                                 batch_size=args.batch_size, progress=not args.no_progress, min_score=args.min_score,
                                 max_pixels=args.max_pixels, overwrite=args.overwrite)
        gt = "FORMAT:GROUND_TRUTH"
    for line in summary.lines():
        print(line)
    print(f"score it: cellgap evaluate --gt {gt} --pred folder:{args.out}")
    return 0


def _predict_slides(args: argparse.Namespace) -> int:
    from cellgap.decoder.slides import SlideSettings, predict_slides

    settings = SlideSettings(region_size=args.region_size, mpp=args.mpp, roi=args.roi, tissue=not args.no_tissue,
                             labels=args.labels, min_score=args.min_score, batch_size=args.batch_size)
    if args.workers or args.scheduler:
        from cellgap.core.progress import progress_bar
        from cellgap.decoder.slide_cluster import predict_slides_on_dask

        with progress_bar(len(args.slides), "slides", unit="slide", enabled=not args.no_progress) as bar:
            summaries = predict_slides_on_dask(args.run, list(args.slides), args.out, settings,
                                               scheduler=args.scheduler, workers=args.workers, device=args.device,
                                               weights=args.weights, on_slide=lambda _: bar.update(1))
    else:
        summaries = predict_slides(args.run, list(args.slides), args.out, settings, device=args.device,
                                   weights=args.weights, progress=not args.no_progress)
    for summary in summaries:
        print(summary.line())
    print(f"{args.out}: open SLIDE.geojson.gz in QuPath (File > Import objects) over the slide")
    return 0


def _register_bench(bench: argparse._SubParsersAction) -> None:
    parser = bench.add_parser("train", help="training from the store vs encoder on the fly vs tensors in memory")
    parser.add_argument("--encoders", default="imagenet/efficientnet_lite0,convnext_base",
                        help="comma-separated: a small and a base-sized encoder by default")
    parser.add_argument("--tiles", type=positive_int, default=32, help="synthetic tiles to train on (default 32)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="tiles per step (default 8)")
    parser.add_argument("--epochs", type=positive_int, default=2, help="timed epochs per path and round (default 2)")
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="timed runs of every path, in alternating order, reported as medians (default 2)")
    add_device_option(parser)
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the table as JSON")
    parser.set_defaults(handler=_bench_train)

    threads = bench.add_parser("threads", help="training steps with a competing busy process: thread counts compared")
    threads.add_argument("--steps", type=positive_int, default=20, help="timed optimiser steps per run (default 20)")
    threads.add_argument("--rounds", type=positive_int, default=3, help="runs of every condition, medians (default 3)")
    threads.add_argument("--json", type=Path, metavar="OUT", help="also write the table as JSON")
    threads.set_defaults(handler=_bench_threads)

    predict = bench.add_parser("predict", help="predicting image files against its parts: a store's prediction plus "
                                               "the encoder's own time on the same tiles")
    predict.add_argument("--run", type=Path, required=True, help="run directory of the model to time")
    predict.add_argument("--tiles", type=positive_int, default=96, help="synthetic tile files (default 96)")
    predict.add_argument("--batch-size", type=positive_int, default=8, help="tiles per forward pass (default 8)")
    predict.add_argument("--rounds", type=positive_int, default=3,
                         help="rounds of the three timings in alternating order, reported as medians (default 3)")
    add_device_option(predict)
    predict.add_argument("--json", type=Path, metavar="OUT", help="also write the result as JSON")
    predict.set_defaults(handler=_bench_predict)
    slides = bench.add_parser("slides", help="whole-slide prediction: nuclei/s, s/mm2 and the time of each stage")
    slides.add_argument("--run", type=Path, required=True, help="run directory of the model to time")
    slides.add_argument("--slide", type=Path, help="a slide to time (default: a synthetic one at the run's mpp)")
    slides.add_argument("--size", type=positive_int, default=4096,
                        help="side of the synthetic slide in pixels (default 4096)")
    slides.add_argument("--tissue", type=_tissue_share, default=0.25,
                        help="tissue share of the synthetic slide, at most 0.78 (default 0.25)")
    slides.add_argument("--region-size", type=positive_int, default=1024, help="region side in pixels (default 1024)")
    add_device_option(slides)
    slides.add_argument("--json", type=Path, metavar="OUT", help="also write the result as JSON")
    slides.set_defaults(handler=_bench_slides)


def _bench_predict(args: argparse.Namespace) -> int:
    from cellgap.decoder.bench_predict import run_predict_bench

    run_predict_bench(args.run, args.tiles, args.batch_size, args.rounds, args.device, args.json)
    return 0


def _tissue_share(text: str) -> float:
    """An argparse type: the synthetic slide's tissue is one ellipse, which covers at most pi/4 of it."""
    value = positive_float(text)
    if value > 0.78:
        raise argparse.ArgumentTypeError(f"expected a share of at most 0.78, got {text!r}")
    return value


def _bench_slides(args: argparse.Namespace) -> int:
    from cellgap.decoder.bench_slides import run_slides_bench

    run_slides_bench(args.run, args.slide, args.size, args.tissue, args.region_size, args.device, args.json)
    return 0


def _bench_threads(args: argparse.Namespace) -> int:
    from cellgap.decoder.bench_threads import run_threads_bench

    run_threads_bench(steps=args.steps, rounds=args.rounds, json_path=args.json)
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from cellgap.decoder.bench import run_train_bench

    run_train_bench(args.encoders.split(","), n_tiles=args.tiles, batch_size=args.batch_size, epochs=args.epochs,
                    device=args.device, json_path=args.json, rounds=args.rounds)
    return 0
