"""Commands of the api package: serve and its benchmark."""
from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Nothing yet: `serve` and `bench api` arrive with the service."""
