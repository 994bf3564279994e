"""One writer per store: an exclusive lock held for the whole of an extraction.

Without it a second extraction takes the first's half-created store for a crashed one and removes
it under the first. Local stores are locked with flock(2) on a hidden file beside the store (beside,
not inside: creating a store clears its folder), which the kernel releases when the process dies,
kill -9 included. Object stores have no such lock: a lock object naming host and pid is written
beside the store and removed at the end; one left by a dead process on this host is taken over,
one from another host must be removed by hand (the error says which object).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cellgap.featurestore.errors import StoreError


def lock_path(location: str) -> str:
    """Where the lock of the store at `location` lives (a path or, for object stores, a URL)."""
    if "://" in location and not location.startswith("file://"):
        return location.rstrip("/") + ".lock"
    path = Path(location.removeprefix("file://"))
    return str(path.parent / f".{path.name}.lock")


def _holder() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def writer_lock(location: str) -> Iterator[None]:
    """Hold the store's writer lock, or raise StoreError at once naming who holds it."""
    where = lock_path(location)
    if "://" in where:
        with _object_lock(location, where):
            yield
        return
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = _describe(os.pread(descriptor, 4096, 0).decode(errors="replace"))
            raise StoreError(f"{location}: another extraction is writing this store ({held_by}); wait for it to "
                             "finish or choose another --store") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock; the file stays, so no second locker races an unlink


@contextlib.contextmanager
def _object_lock(location: str, where: str) -> Iterator[None]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(where)
    if fs.exists(path):
        text = fs.cat_file(path).decode(errors="replace")
        if not _stale_here(text):
            raise StoreError(f"{location}: another extraction is writing this store ({_describe(text)}); wait for "
                             f"it to finish, or remove {where} if that process is gone")
    fs.pipe_file(path, json.dumps(_holder()).encode())
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)


def _stale_here(text: str) -> bool:
    """A lock object left by a process of this host that no longer runs."""
    try:
        holder = json.loads(text)
        if holder["host"] != socket.gethostname():
            return False
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError):
        return False
    return False
