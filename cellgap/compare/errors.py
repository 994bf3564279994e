"""The comparison's own error: a bad compare YAML or a grid that cannot run, reported as one line."""
from __future__ import annotations

from cellgap.core.errors import CellgapError


class CompareError(CellgapError, ValueError):
    """A compare config that cannot be used (names the YAML field), or a grid that cannot be run."""


def one_line(text: object) -> str:
    """Collapse a message to one line (the CLI reports errors on exactly one line)."""
    return " ".join(str(text).split())
