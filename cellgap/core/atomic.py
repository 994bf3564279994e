"""Files that appear whole or not at all: write a uniquely named temporary beside the target, rename it in.

The temporary's name is unique per call (not per process), so two threads writing the same file
never share one; a failure removes it. `durable` also fsyncs the data before the rename, for files
that a resume trusts (checkpoints, shard files); the folder entry itself is the caller's concern.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}{PARTIAL_SUFFIX}")


def write_atomically(path: Path, data: bytes | str | Iterable[bytes | memoryview], *, durable: bool = False) -> None:
    """Replace `path` with `data` (bytes, text as UTF-8, or bytes-like parts written in turn)."""
    path = Path(path)
    parts: Iterable[bytes | memoryview]
    if isinstance(data, str):
        parts = [data.encode()]
    elif isinstance(data, bytes | bytearray | memoryview):
        parts = [data]
    else:
        parts = data
    temporary = temporary_beside(path)
    try:
        with open(temporary, "wb") as handle:
            for part in parts:
                handle.write(part)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
