"""A non-finite loss stops training before anything is saved; non-finite weights are never loaded."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cellgap.decoder.checkpoint import load_checkpoint
from cellgap.decoder.errors import CheckpointError, TrainingError
from cellgap.decoder.training.config import TrainConfig
from cellgap.decoder.training.loop import train
from cellgap.featurestore.store.reader import open_store

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


def test_an_infinite_learning_rate_stops_training_with_one_line_and_no_checkpoint(tmp_path, conv_store):
    out = tmp_path / "run"
    result = subprocess.run([CELLGAP, "train", "--store", str(conv_store), "--out", str(out), "--epochs", "2",
                             "--lr", "inf", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert "not finite" in last_line and "epoch 1" in last_line and "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists() and not (out / "last.safetensors").exists()


def test_a_damaged_feature_tile_is_named_when_the_loss_turns_nan(tmp_path, conv_store):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(conv_store, damaged)
    store = open_store(str(damaged))
    layer = store.layers[0].name
    array = zarr.open_array(str(damaged / "features" / layer), mode="r+")
    shard_tiles = array.shards[0]
    values = np.asarray(array[:shard_tiles])
    values[1] = np.nan  # tile 1 of the first shard, rewritten as a whole shard
    array[:shard_tiles] = values
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"not finite .*tiles \[[0-9, ]*\b1\b"):
        train(TrainConfig(store=str(damaged), out=out, epochs=1, batch_size=10, augment="none", progress=False))
    assert not (out / "model.safetensors").exists()


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, trained_run, conv_store):
    source = trained_run / "model.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(source))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    run = tmp_path / "poisoned"
    shutil.copytree(trained_run, run)
    save_file(state, str(run / "model.safetensors"), metadata)
    with pytest.raises(CheckpointError, match="not finite"):
        load_checkpoint(run / "model.safetensors")
    result = subprocess.run([CELLGAP, "predict", "--run", str(run), "--store", str(conv_store), "--out",
                             str(tmp_path / "pred"), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2 and "not finite" in result.stderr, result.stderr


def test_saving_non_finite_weights_is_refused(tmp_path, trained_run):
    kept = load_checkpoint(trained_run / "model.safetensors")
    with torch.no_grad():
        next(kept.model.parameters()).fill_(float("inf"))
    from cellgap.decoder.checkpoint import save_checkpoint

    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(tmp_path / "m.safetensors", kept.model, kept.manifest, kept.postprocess, kept.class_names, {})
    assert not (tmp_path / "m.safetensors").exists()
