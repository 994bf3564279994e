"""`cellgap compare --config grid.yaml [--out REPORT_DIR]`: the encoder comparison as one command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellgap.core.clitools import positive_int


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare", help="compare encoders and layer sets: stores, decoders, test metrics, report",
        description="For each (data set, encoder, layer set) of the YAML, build a feature store or reuse a "
                    "compatible one (found by manifest); for each seed train a decoder, predict the test split and "
                    "score it; write the paper-like table, plots and a gallery. Finished runs are skipped and "
                    "interrupted ones resumed, so rerunning the same command continues where it stopped.")
    parser.add_argument("--config", type=Path, required=True, help="compare YAML (see docs/compare.md)")
    parser.add_argument("--out", type=Path,
                        help="report folder (default: the YAML's `out`, else compare-<config name>)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=positive_int, default=1,
                       help="jobs at a time on this machine (default 1: in sequence; N: N worker processes)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask scheduler (tcp://host:8786): one job per worker; the report folder, data sets and "
                            "store_dirs must be visible to every worker")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N for extraction and training (overrides the YAML)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_compare)


def _say(line: str) -> None:
    print(line, flush=True)


def _compare(args: argparse.Namespace) -> int:
    from cellgap.compare.artefacts import write_report
    from cellgap.compare.config import load_compare_config
    from cellgap.compare.runner import run_grid

    config = load_compare_config(args.config)
    out = args.out or config.out or Path(f"compare-{args.config.stem}")
    summary = run_grid(config, out, jobs=args.jobs, scheduler=args.scheduler, device=args.device,
                       progress=not args.no_progress, say=_say)
    written = write_report(summary, config, title=f"Encoder comparison: {args.config.name}")
    counts = ", ".join(f"{n} {action}" for action, n in sorted(summary.counts().items()))
    print(f"done: {counts}")
    print(f"report: {summary.report_dir / 'results.md'} (also results.csv, runs.csv); plots: "
          f"{len(written['plots'])} in {summary.report_dir / 'plots'}; gallery: "
          f"{', '.join(str(p) for p in written['gallery']) or 'none'}")
    if summary.failures:
        job, error = summary.failures[0]
        sys.stderr.write(f"cellgap: {len(summary.failures)} job(s) failed; first: {job}: {error}\n")
        return 1
    return 0
