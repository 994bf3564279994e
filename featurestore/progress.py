"""Progress bars for long work (tqdm on stderr; silent when disabled or not a terminal run by tests)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tqdm import tqdm


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, description: str, unit: str = "it", enabled: bool = True) -> Iterator[tqdm | _Silent]:
    """A bar with rate (`unit`/s) and ETA; a no-op object when disabled."""
    if not enabled:
        yield _Silent()
        return
    with tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, smoothing=0.1) as bar:
        yield bar
