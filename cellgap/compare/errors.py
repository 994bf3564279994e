"""The comparison's own error: a bad compare YAML or a grid that cannot run, reported as one line."""
from __future__ import annotations

from cellgap.core.configfile import one_line
from cellgap.core.errors import CellgapError

__all__ = ["CompareError", "one_line"]


class CompareError(CellgapError, ValueError):
    """A compare config that cannot be used (names the YAML field), or a grid that cannot be run."""
