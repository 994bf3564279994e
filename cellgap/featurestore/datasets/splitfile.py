"""A data set's own split from `folds.csv` (CISCA/CytoDArk0 codes 0 train, 1 valid, 2 test)."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from cellgap.featurestore.errors import DatasetError

SPLIT_FILE_NAMES: tuple[str, ...] = ("folds.csv", "splits.csv")
_NAME_COLUMNS = ("img_id", "name", "image", "filename", "file")
_SPLIT_COLUMNS = ("fold", "split")
_CODES = {"0": "train", "1": "valid", "2": "test", "train": "train", "valid": "valid", "val": "valid", "test": "test"}


def read_split_file(root: Path, names: Sequence[str]) -> list[str] | None:
    """The split of every name listed in the folder's split file, or None when there is no file.

    Names may carry a file extension in the CSV. Every name must be listed, and every code known.
    """
    path = next((root / n for n in SPLIT_FILE_NAMES if (root / n).is_file()), None)
    if path is None:
        return None
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read split file ({error})") from None
    if not rows:
        raise DatasetError(f"{path}: split file has no rows")
    columns = {c.strip().lower(): c for c in rows[0]}
    name_column = next((columns[c] for c in _NAME_COLUMNS if c in columns), None)
    split_column = next((columns[c] for c in _SPLIT_COLUMNS if c in columns), None)
    if name_column is None or split_column is None:
        raise DatasetError(
            f"{path}: needs a name column ({'/'.join(_NAME_COLUMNS)}) and a split column ({'/'.join(_SPLIT_COLUMNS)})"
        )
    split_of: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        code = str(row[split_column]).strip().lower()
        if code not in _CODES:
            raise DatasetError(f"{path}:{line}: unknown split code {row[split_column]!r} (use 0/1/2 or train/valid/test)")
        split_of[Path(str(row[name_column]).strip()).stem] = _CODES[code]
    missing = [n for n in names if n not in split_of]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} images are not listed, e.g. {missing[0]!r}")
    return [split_of[n] for n in names]
