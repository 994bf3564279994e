"""Progress bars for long work: tqdm on stderr when it is a terminal, silent otherwise.

Piped or logged runs get no bar lines mixed into stderr (where errors are one line); their
commands print a summary with the rates at the end instead.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tqdm import tqdm


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, description: str, unit: str = "it", enabled: bool = True) -> Iterator[tqdm | _Silent]:
    """A bar with rate (`unit`/s) and ETA; a no-op object when disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield _Silent()
        return
    with tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, smoothing=0.1) as bar:
        yield bar
