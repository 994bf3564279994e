"""Interrupted extraction (kill -9 at a random moment) resumes to an identical store; dask gives the same store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cellgap.featurestore.store import open_store
from tests.conftest import synthetic_tiles, write_conic

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


@pytest.fixture(scope="module")
def conic10(tmp_path_factory):
    return write_conic(tmp_path_factory.mktemp("c10") / "conic", synthetic_tiles(10, seed=9))


def _extract_args(dataset: str, store: Path, *extra: str) -> list[str]:
    return [CELLGAP, "extract", "--dataset", dataset, "--encoder", "convnext_atto", "--pretrained", "false",
            "--store", str(store), "--shard-tiles", "2", "--batch-size", "2", "--no-progress", *extra]


def assert_same_store(a: Path, b: Path) -> None:
    one, two = open_store(str(a)), open_store(str(b))
    assert one.done.all() and two.done.all()
    indices = np.arange(one.n_tiles)
    assert np.array_equal(one.read_images(indices), two.read_images(indices))
    for x, y in zip(one.read_labels(indices), two.read_labels(indices)):
        assert np.array_equal(x, y)
    for layer in one.manifest.layer_names:
        assert np.array_equal(one.read_stored_features(indices, layer)[0], two.read_stored_features(indices, layer)[0])
    skip = {"created"}
    assert one.manifest.model_dump(exclude=skip) == two.manifest.model_dump(exclude=skip)
    for path in ("meta/name", "meta/split", "meta/pixel_xxh3_128", "meta/origin"):
        assert np.array_equal(np.asarray(one.group[path][:]), np.asarray(two.group[path][:]))


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, conic10):
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    subprocess.run(_extract_args(f"conic:{conic10}", path), check=True, capture_output=True)
    return path


def _done_count(store: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(store), mode="r")["done"][:]).sum())
    except Exception:  # the store may not exist yet or be mid-creation
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_done", [0, 4])
def test_kill_minus_nine_then_resume_gives_the_identical_store(tmp_path, conic10, reference_store, kill_after_done):
    store = tmp_path / "killed.zarr"
    process = subprocess.Popen(_extract_args(f"conic:{conic10}", store), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (kill_after_done == 0 and (store / "zarr.json").exists()) or _done_count(store) >= kill_after_done > 0:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = _done_count(store)
    assert done_before < 10, "the run finished before it could be killed"
    resumed = subprocess.run(_extract_args(f"conic:{conic10}", store), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"wrote {10 - done_before} tiles" in resumed.stdout
    assert not list(store.rglob("*.partial"))
    assert_same_store(store, reference_store)
    again = subprocess.run(_extract_args(f"conic:{conic10}", store), capture_output=True, text=True)
    assert "nothing to do" in again.stdout


@pytest.mark.slow
def test_two_dask_workers_write_the_same_store_as_one_process(tmp_path, conic10, reference_store):
    store = tmp_path / "dask.zarr"
    result = subprocess.run(_extract_args(f"conic:{conic10}", store, "--workers", "2"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote 10 tiles" in result.stdout
    assert_same_store(store, reference_store)
