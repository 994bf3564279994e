"""What every `cellgap bench` prints and saves: its rows as a table and, on request, as JSON."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any


def report_rows(rows: list[Any], format_rows: Callable[[list[Any]], str], json_path: Path | None) -> None:
    """Print the full table; write the rows (dataclasses) as JSON when a path is given."""
    print()
    print(format_rows(rows))
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(row) for row in rows], indent=2))
