"""Sizes checked before anything is allocated, and files that are not what they claim: one line, exit code 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from cellgap.cli import main
from cellgap.featurestore.datasets.imageio import load_npy, read_label
from cellgap.featurestore.errors import DatasetError, StoreError

CELLGAP = str(Path(sys.executable).with_name("cellgap"))
ENCODER = ["--encoder", "convnext_atto", "--pretrained", "false", "--no-progress"]


def npy_claiming(path: Path, shape: tuple[int, ...], dtype: str = "<i4") -> Path:
    """A .npy header for `shape` followed by 64 bytes: a 40 GB claim in a 200-byte file."""
    with open(path, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": dtype, "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 64)
    return path


def captured_error(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = int(stop.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_npy_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    huge = npy_claiming(tmp_path / "huge.npy", (100_000, 100_000))  # 10^10 elements: MemoryError before
    with pytest.raises(DatasetError, match=r"huge.npy: the .npy header claims shape \(100000, 100000\)"):
        read_label(huge)
    with pytest.raises(DatasetError, match="claims shape"):
        load_npy(huge, mmap=True)
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((8, 8), np.int32))
    short.write_bytes(short.read_bytes()[:-4])  # truncated by one element
    with pytest.raises(DatasetError, match="252 bytes of data"):
        read_label(short)
    np.save(tmp_path / "fine.npy", np.arange(6, dtype=np.int32).reshape(2, 3))
    assert load_npy(tmp_path / "fine.npy").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_text_file_named_npy_is_not_called_pickled_data(tmp_path):
    text = tmp_path / "labels.npy"
    text.write_text("id,class\n1,2\n")
    with pytest.raises(DatasetError, match="not a .npy file") as raised:
        read_label(text)
    assert "pickle" not in str(raised.value)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="Python objects"):
        read_label(tmp_path / "objects.npy")


def test_a_huge_npy_in_a_dataset_is_one_line_from_extract(tmp_path, tiles4):
    from tests.conftest import write_conic

    root = write_conic(tmp_path / "conic", tiles4[:1])
    npy_claiming(root / "labels.npy", (10_000_000_000, 256, 256, 2))
    result = subprocess.run([CELLGAP, "extract", "--dataset", f"conic:{root}", "--store", str(tmp_path / "s.zarr"),
                             *ENCODER], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "labels.npy" in result.stderr and "claims shape" in result.stderr


def test_sizes_are_checked_before_anything_is_allocated(tmp_path, capsys):
    store = str(tmp_path / "s.zarr")
    for flag in ("--tile-size", "--input-size"):
        line = captured_error(capsys, ["extract", "--dataset", "synthetic:2", "--store", store, *ENCODER, flag, "100000"])
        assert flag in line and "<= 2048" in line
    assert "100000" in captured_error(capsys, ["extract", "--dataset", "synthetic:1000000000000", "--store", store,
                                               *ENCODER])
    assert "seed" in captured_error(capsys, ["extract", "--dataset", "synthetic:2,seed=-1", "--store", store, *ENCODER])
    assert "--seed" in captured_error(capsys, ["extract", "--dataset", "synthetic:2", "--store", store, *ENCODER,
                                               "--seed", "-1"])
    assert not Path(store).exists()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    from cellgap.featurestore.encoders import EncoderSettings
    from cellgap.featurestore.extract.config import ExtractConfig
    from cellgap.featurestore.extract.job import run_extraction

    path = tmp_path_factory.mktemp("store") / "s.zarr"
    run_extraction(ExtractConfig(dataset="synthetic:3,seed=2", store=str(path), batch_size=3, shard_tiles=2,
                                 encoder=EncoderSettings(name="convnext_atto", pretrained=False), progress=False))
    return path


def edited_copy(store: Path, target: Path, edit) -> Path:
    shutil.copytree(store, target)
    meta = target / "zarr.json"
    document = json.loads(meta.read_text())
    edit(document["attributes"]["cellgap"])
    meta.write_text(json.dumps(document))
    return target


def test_an_edited_manifest_is_refused_when_the_store_is_opened(tmp_path, small_store, capsys):
    from cellgap.featurestore.store.reader import open_store

    open_store(str(small_store))  # the untouched store opens

    def more_channels(manifest):
        manifest["encoder"]["layers"][0]["channels"] += 1  # a RuntimeError inside the decoder's convolution before

    store = edited_copy(small_store, tmp_path / "channels.zarr", more_channels)
    with pytest.raises(StoreError, match=r"layer 'stage0' \(channels 41.*features/stage0 is shaped \(40,"):
        open_store(str(store))
    for n_tiles in (2, 4):  # fewer or more tiles than the arrays hold: read without notice before
        def tiles(manifest, n=n_tiles):
            manifest["dataset"]["n_tiles"] = n

        store = edited_copy(small_store, tmp_path / f"tiles{n_tiles}.zarr", tiles)
        with pytest.raises(StoreError, match=f"dataset.n_tiles {n_tiles} but tiles/image holds 3 tiles"):
            open_store(str(store))
    line = captured_error(capsys, ["train", "--store", str(tmp_path / "channels.zarr"), "--out", str(tmp_path / "run"),
                                   "--epochs", "1", "--no-progress"])
    assert "channels 41" in line
