"""The feature store's commands: help, a real extraction, and one-line errors with exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cellgap.cli import main
from tests.conftest import write_conic, write_folder

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CELLGAP, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("extract", "store", "encoders", "evaluate", "bench"):
        assert command in result.stdout


def test_extract_folder_prints_a_summary(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:2])
    result = run_cli("extract", "--dataset", f"folder:{root}", "--encoder", "convnext_atto", "--pretrained", "false",
                     "--store", str(tmp_path / "s.zarr"), "--batch-size", "2", "--magnification", "20")
    assert result.returncode == 0, result.stderr
    assert "wrote 2 tiles" in result.stdout and "KiB/tile" in result.stdout and "tiles/s" in result.stdout
    assert result.stderr.strip() == ""  # no bar lines when stderr is not a terminal
    info = run_cli("store", "info", str(tmp_path / "s.zarr"))
    assert "magnification 20x (flag)" in info.stdout


def test_unknown_magnification_is_said_once_and_recorded_as_assumed(tmp_path, tiles4):
    from cellgap.featurestore.store import open_store

    root = write_folder(tmp_path / "f", tiles4[:2])
    result = run_cli("extract", "--dataset", f"folder:{root}", "--encoder", "convnext_atto", "--pretrained", "false",
                     "--store", str(tmp_path / "s.zarr"), "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "magnification" in line]
    assert len(warnings) == 1 and "--magnification" in warnings[0] and "40x" in warnings[0]
    dataset = open_store(str(tmp_path / "s.zarr")).manifest.dataset
    assert (dataset.magnification, dataset.magnification_source) == (40, "assumed")
    again = run_cli("extract", "--dataset", f"folder:{root}", "--encoder", "convnext_atto", "--pretrained", "false",
                    "--store", str(tmp_path / "s.zarr"), "--batch-size", "2", "--magnification", "20")
    assert again.returncode == 2 and "magnification" in again.stderr  # another magnification is another store


def test_magnification_contradicting_the_data_set_is_one_line(tmp_path):
    result = run_cli("extract", "--dataset", "synthetic:2", "--encoder", "convnext_atto", "--pretrained", "false",
                     "--store", str(tmp_path / "s.zarr"), "--magnification", "40")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "contradicts" in result.stderr


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_are_one_line_errors(tmp_path, tiles4):
    base = ["--encoder", "convnext_atto", "--pretrained", "false", "--no-progress"]
    _one_line_error(run_cli("extract", "--dataset", "bogus:/x", "--store", str(tmp_path / "a.zarr"), *base),
                    "unknown data set format 'bogus'")
    _one_line_error(run_cli("extract", "--dataset", f"conic:{tmp_path / 'nothing'}", "--store", str(tmp_path / "b.zarr"),
                            *base), "labels.npy", "not found")
    root = write_folder(tmp_path / "f", tiles4[:1])
    np.save(root / "labels" / "tile0.npy", np.zeros((10, 10), np.int32))
    _one_line_error(run_cli("extract", "--dataset", f"folder:{root}", "--store", str(tmp_path / "c.zarr"), *base),
                    "tile0.npy", "10x10", "256x256")
    from cellgap.featurestore.store import open_store

    assert not open_store(str(tmp_path / "c.zarr")).done.any()  # the failed tile is not marked done
    good = write_conic(tmp_path / "conic", tiles4[:2])
    _one_line_error(run_cli("extract", "--dataset", f"conic:{good}", "--store", str(tmp_path / "d.zarr"),
                            "--encoder", "convnext_atoo", "--pretrained", "false"), "unknown encoder", "did you mean")
    _one_line_error(run_cli("extract", "--dataset", f"conic:{good}", "--store", str(tmp_path / "e.zarr"), *base,
                            "--layers", "shallow"), "for ViTs")
    _one_line_error(run_cli("extract", "--dataset", f"conic:{good}", "--store", str(tmp_path / "e.zarr"), *base,
                            "--batch-size", "0"), "batch-size")
    _one_line_error(run_cli("extract", "--dataset", f"conic:{good}", "--store", str(tmp_path / "e.zarr"), *base,
                            "--tile-size", "16"), "--tile-size", ">= 32", "16")
    _one_line_error(run_cli("extract", "--dataset", f"conic:{good}", "--store", str(tmp_path / "e.zarr"), *base,
                            "--input-size", "8"), "--input-size", ">= 32")
    _one_line_error(run_cli("store", "info", str(tmp_path / "missing.zarr")), "no store here")


def test_a_misspelt_layer_spec_fails_before_the_data_or_the_encoder_is_touched(tmp_path):
    # uni's weights are gated and the data set is absent: either would be the error if --layers came later
    _one_line_error(run_cli("extract", "--dataset", f"conic:{tmp_path / 'nothing'}", "--store", str(tmp_path / "a.zarr"),
                            "--encoder", "uni", "--layers", "deeep"), "--layers", "'deeep'", "mixed")
    assert not (tmp_path / "a.zarr").exists()


def test_an_unreachable_hub_is_one_line_without_retries(tmp_path):
    # a closed local port stands for a network without a route to the hub; an empty HF_HOME for no cache
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([CELLGAP, "extract", "--dataset", "synthetic:2", "--store", str(tmp_path / "a.zarr"),
                             "--encoder", "uni", "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    _one_line_error(result, "cannot load encoder 'uni'", "cannot be reached", "not in the local cache", "--weights")


def test_store_of_another_encoder_on_the_command_line(tmp_path, tiles4):
    good = write_conic(tmp_path / "conic", tiles4[:2])
    store = str(tmp_path / "s.zarr")
    assert main(["extract", "--dataset", f"conic:{good}", "--store", store, "--encoder", "convnext_atto",
                 "--pretrained", "false", "--no-progress"]) == 0
    result = run_cli("extract", "--dataset", f"conic:{good}", "--store", store, "--encoder", "vit_tiny", "--pretrained",
                     "false", "--no-progress")
    _one_line_error(result, "written by encoder 'convnext_atto'")
    from cellgap.featurestore.store import open_store

    assert open_store(store).done.all()  # the refused run left the store as it was


def test_encoders_lists_presets(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name in ("imagenet/efficientnet_lite0", "convnext_base_22k", "uni2_h", "virchow2", "prov_gigapath"):
        assert name in out


def test_extract_replicas_flag_reaches_the_job_and_refuses_zero(tmp_path):
    common = ("extract", "--dataset", "synthetic:4", "--encoder", "convnext_atto", "--pretrained", "false",
              "--batch-size", "1", "--shard-tiles", "2", "--no-progress", "--device", "cpu")
    three = run_cli(*common, "--store", str(tmp_path / "three.zarr"), "--replicas", "3")
    assert three.returncode == 0, three.stderr
    assert "wrote 4 tiles" in three.stdout and "with 3 encoder replicas" in three.stdout
    _one_line_error(run_cli(*common, "--store", str(tmp_path / "zero.zarr"), "--replicas", "0"), "--replicas", ">= 1")
