"""Commands of the decoder package: evaluate, train, predict and their benchmarks."""
from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from decoder.metrics import cli as metrics_cli

    metrics_cli.register(commands, bench)
