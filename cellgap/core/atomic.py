"""Files that appear whole or not at all: write a uniquely named temporary beside the target, rename it in.

`folder_replaced` does the same for a whole folder of outputs.

The temporary's name is unique per call (not per process), so two threads writing the same file
never share one; a failure removes it. `durable` also fsyncs the data before the rename, for files
that a resume trusts (checkpoints, shard files); the folder entry itself is the caller's concern.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


@contextmanager
def folder_replaced(path: Path) -> Iterator[Path]:
    """A new temporary folder beside `path` to fill. When the block succeeds it takes `path`'s place (a folder
    already there is moved aside first and removed after the swap); when it fails it is removed and `path` is
    left as it was, so `path` never holds the outputs of a half-finished run mixed with older ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_beside(path)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = temporary_beside(path) if path.exists() else None
    if old is not None:
        os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
