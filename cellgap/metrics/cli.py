"""The `cellgap evaluate` command and the `cellgap bench metrics` benchmark."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellgap.core.clitools import positive_float, positive_int


def _iou_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a threshold in [0, 1), got {text!r}")
    return value


# what each FORMAT of --gt and --pred reads (every format of open_label_source; a test holds them equal)
LABEL_FORMAT_HELP: dict[str, str] = {
    "pannuke": "masks.npy and types.npy", "conic": "labels.npy", "cytodark0": "the data set's folder",
    "folder": "labels/<name>.npy, .tif, .png or .mat", "synthetic": "the built-in sample, N[,seed=S]",
    "store": "a feature store's labels, PATH[,split=NAME]",
}


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `evaluate` to the top-level commands and `metrics` to the `bench` commands."""
    evaluate = commands.add_parser(
        "evaluate", help="score predictions against ground truth (PQ, AJI, F1, mPQ+, PanNuke mPQ/bPQ)",
        description="Score predicted instance (and class) maps against ground truth with the HoVer-Net, CoNIC "
                    "and PanNuke definitions. FORMAT is one of: "
                    + "; ".join(f"{name} ({what})" for name, what in LABEL_FORMAT_HELP.items())
                    + ". Images pair by name, else by position.")
    evaluate.add_argument("--gt", required=True, metavar="FORMAT:PATH", help="ground truth")
    evaluate.add_argument("--pred", required=True, metavar="FORMAT:PATH", help="prediction")
    reach = evaluate.add_mutually_exclusive_group()
    reach.add_argument("--radius", type=positive_float, metavar="PX",
                       help="centroid pairing radius in pixels (default 12, HoVer-Net at 40x)")
    reach.add_argument("--magnification", type=int, choices=(40, 20),
                       help="set the radius from the magnification: 12 px at 40x, 6 px at 20x")
    evaluate.add_argument("--classes", type=positive_int, metavar="K",
                          help="number of classes (default: from the data set's class names, else the largest id)")
    evaluate.add_argument("--match-iou", type=_iou_threshold, default=0.5, metavar="T",
                          help="PQ pairs need IoU strictly above T (default 0.5)")
    evaluate.add_argument("--json", type=Path, metavar="OUT", help="write the metrics as JSON")
    evaluate.add_argument("--per-image", type=Path, metavar="CSV", help="write one row of values per image")
    evaluate.set_defaults(handler=run_evaluate)

    metrics = bench.add_parser(
        "metrics", help="per-image time and PQ of cellgap's metrics against the cellseg-metrics package",
        description="Time cellgap's per-image metrics and cellseg-metrics on the same synthetic tiles "
                    "(few, typical and crowded) with perturbed predictions; compare their PQ.")
    metrics.add_argument("--tiles", type=positive_int, default=5, help="tiles per density (default 5)")
    metrics.add_argument("--seed", type=int, default=0, help="seed of the first tile (default 0)")
    metrics.add_argument("--size", type=positive_int, default=256, help="tile side in pixels (default 256)")
    metrics.set_defaults(handler=run_bench)


def run_evaluate(args: argparse.Namespace) -> int:
    """Read both sources, score, print the table, write the requested files."""
    from cellgap.featurestore.datasets import open_label_source
    from cellgap.metrics.detection import RADIUS_AT_MAGNIFICATION
    from cellgap.metrics.evaluate import evaluate_sources, write_json, write_per_image_csv
    from cellgap.metrics.report import format_report

    if args.radius is not None:
        radius = args.radius
    else:
        radius = RADIUS_AT_MAGNIFICATION[args.magnification or 40]
    gt = open_label_source(args.gt)
    pred = open_label_source(args.pred)
    report = evaluate_sources(gt, pred, n_classes=args.classes, radius=radius, match_iou=args.match_iou)
    sys.stdout.write(format_report(report))
    if args.json is not None:
        write_json(report, args.json)
    if args.per_image is not None:
        write_per_image_csv(report, args.per_image)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Print the benchmark table."""
    from cellgap.metrics.errors import MetricsError

    try:
        import cellseg_metrics
    except ImportError:
        raise MetricsError("the metrics benchmark compares with cellseg-metrics, which is not installed: "
                           "pip install cellseg-metrics (or the project's [bench] extra)") from None
    from cellgap.featurestore.datasets.synthetic import make_tile
    from cellgap.metrics.bench import format_bench, run_benchmark

    rows = run_benchmark(cellseg_metrics, make_tile, tiles=args.tiles, seed=args.seed, size=args.size)
    sys.stdout.write(format_bench(rows, args.tiles))
    return 0
