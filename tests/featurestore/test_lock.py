"""One writer per store: a second extraction is refused with one line and never touches the first's store."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.store.lock import lock_path, writer_lock
from cellgap.featurestore.store.writer import CREATING

CELLGAP = str(Path(sys.executable).with_name("cellgap"))
HOLD = """
import sys, time, zarr
from cellgap.featurestore.store.lock import writer_lock
from cellgap.featurestore.store.writer import CREATING
with writer_lock(sys.argv[1]):
    zarr.open_group(sys.argv[1], mode="w").attrs[CREATING] = True  # a store being created, slowly
    print("held", flush=True)
    time.sleep(120)
"""


def _extract(store: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CELLGAP, "extract", "--dataset", "synthetic:2", "--encoder", "convnext_atto", "--pretrained",
                           "false", "--store", str(store), "--batch-size", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=300)


def test_a_second_extraction_is_refused_and_leaves_the_first_ones_store_alone(tmp_path):
    store = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = _extract(store)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]
        assert "another extraction is writing this store" in second.stderr and f"pid {holder.pid}" in second.stderr
        assert CREATING in zarr.open_group(str(store), mode="r").attrs  # not taken for a crashed run and removed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    after = _extract(store)  # the kernel dropped the dead holder's lock: the half-created store is redone
    assert after.returncode == 0, after.stderr
    assert CREATING not in zarr.open_group(str(store), mode="r").attrs


def test_the_lock_lives_beside_the_store(tmp_path):
    store = tmp_path / "s.zarr"
    with writer_lock(str(store)):
        assert json.loads(Path(lock_path(str(store))).read_text())["pid"] == os.getpid()
        with pytest.raises(StoreError, match="another extraction"):
            with writer_lock(str(store)):
                pass
    with writer_lock(str(store)):  # released on exit
        pass
    assert not store.exists()


def test_object_stores_get_a_lock_object_and_a_dead_local_holder_is_taken_over():
    import fsspec

    location = "memory://locks/s.zarr"
    with writer_lock(location):
        with pytest.raises(StoreError, match=r"remove memory://locks/s\.zarr\.lock"):
            with writer_lock(location):
                pass
    fs = fsspec.filesystem("memory")
    assert not fs.exists("/locks/s.zarr.lock")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fs.pipe_file("/locks/s.zarr.lock", json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                   "since": "then"}).encode())
    with writer_lock(location):
        pass
    fs.pipe_file("/locks/s.zarr.lock", json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}).encode())
    with pytest.raises(StoreError, match="pid 1 on elsewhere"):
        with writer_lock(location):
            pass
    fs.rm_file("/locks/s.zarr.lock")
