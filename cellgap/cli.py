"""The `cellgap` console script: it only gathers the subcommands that each package registers.

Every handler receives the parsed namespace and returns an exit code. User errors (any
`CellgapError`) become one line on stderr and exit code 2; Ctrl-C says how to resume. Anything else
that escapes a command (a MemoryError, an error inside torch) is also one line and exit code 2,
never a traceback; `-v` prints the traceback before that line.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from cellgap.core.allocator import keep_freed_memory
from cellgap.core.clitools import OneLineParser
from cellgap.core.configfile import one_line
from cellgap.core.errors import CellgapError
from cellgap.core.threads import apply_before_torch, busy_cores, plan_threads
from cellgap.core.version import cellgap_version

# commands that run a model on the CPU: their torch thread count follows the cores other work leaves idle
MODEL_COMMANDS = frozenset({"extract", "train", "predict", "compare", "demo", "bench", "serve"})


def build_parser() -> argparse.ArgumentParser:
    """The full parser: each package adds its own commands."""
    from cellgap import demo
    from cellgap.api import cli as api_cli
    from cellgap.compare import cli as compare_cli
    from cellgap.decoder import cli as decoder_cli
    from cellgap.featurestore import cli as featurestore_cli
    from cellgap.gpubench import cli as gpubench_cli
    from cellgap.metrics import cli as metrics_cli

    parser = OneLineParser(
        prog="cellgap",
        description="Frozen foundation-model features, stored once, for cell segmentation and classification.",
    )
    parser.add_argument("--version", action="version", version=f"cellgap {cellgap_version()}")
    add_global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    bench = commands.add_parser("bench", help="measure ratios that the design promises, in one run")
    bench_commands = bench.add_subparsers(dest="bench", metavar="WHAT", required=True, parser_class=OneLineParser)
    for package_cli in (featurestore_cli, metrics_cli, decoder_cli, compare_cli, api_cli, gpubench_cli):
        package_cli.register(commands, bench_commands)
    demo.register(commands)
    return parser


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Options of the `cellgap` command itself, read by `main` whatever the subcommand."""
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--malloc", choices=("keep", "system"), default="keep",
                        help="keep: large blocks stay in the heap (up to 2x faster CPU forward passes, "
                             "see cellgap/core/allocator.py); system: glibc's defaults. `serve` always uses "
                             "glibc's, so that memory goes back after a burst of large uploads")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        for noisy in ("distributed", "tornado", "asyncio", "httpx", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.malloc == "keep" and args.command != "serve":  # a server hands memory back after a burst
        keep_freed_memory()
    if args.command in MODEL_COMMANDS:  # before anything imports torch
        plan = plan_threads(busy=None if "OMP_NUM_THREADS" in os.environ else busy_cores())
        apply_before_torch(plan)
        logging.getLogger("cellgap").debug("torch threads: %d (%s)", plan.threads, plan.reason)
    try:
        return int(args.handler(args) or 0)
    except CellgapError as error:
        sys.stderr.write(f"cellgap: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("cellgap: interrupted; completed work is kept, rerun the same command to resume\n")
        return 130
    except Exception as error:  # noqa: BLE001 - the command boundary: whatever is left becomes one line
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(f"cellgap: error: {unexpected_error_line(error)}\n")
        return 2


def unexpected_error_line(error: BaseException, limit: int = 400) -> str:
    """One line for an error no cellgap check anticipated: its kind and message, shortened, and what to do."""
    if isinstance(error, MemoryError):
        what = "out of memory" + (f" ({one_line(error)})" if str(error) else "")
        hint = "use smaller inputs or a smaller --batch-size"
    else:
        what = f"{type(error).__name__}: {one_line(error) or 'no message'}"
        hint = "rerun with -v for the traceback"
    if len(what) > limit:
        what = what[: limit - 3] + "..."
    return f"{what} ({hint})"


if __name__ == "__main__":
    sys.exit(main())
