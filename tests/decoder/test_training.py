"""Training from the store: run directory contents, checkpoint round trip, resume, refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cellgap.decoder.checkpoint import load_checkpoint
from cellgap.decoder.errors import CheckpointError, TrainingError
from cellgap.decoder.training.config import TrainConfig, load_train_config
from cellgap.decoder.training.loop import train

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


def test_run_directory_holds_everything(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"model.safetensors", "last.safetensors", "state.pt", "config.json", "manifest.json", "metrics.jsonl",
            "metrics.csv", "curves.png", "validation.json"} <= names
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"loss", "cce", "dice_body", "mae", "msge", "celltype"} <= set(records[0]["train"])
    assert {"pq", "mpq_plus", "f1_d"} <= set(records[-1]["valid"])
    validation = json.loads((trained_run / "validation.json").read_text())
    assert {"instance", "detection", "conic"} <= set(validation)


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path, trained_run, conv_store):
    """Saving then loading gives back the model in memory (not merely two equal loads of one file)."""
    from cellgap.decoder.checkpoint import save_checkpoint
    from cellgap.decoder.networks import CellDecoder, on_device
    from cellgap.featurestore.store import open_store

    trained = load_checkpoint(trained_run / "model.safetensors")
    torch.manual_seed(5)
    model = on_device(CellDecoder(trained.spec), "cpu").eval()  # weights differ from any saved run; same layout
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, trained.manifest, trained.postprocess, trained.class_names, {"note": "test"})
    loaded = load_checkpoint(path)
    store = open_store(str(conv_store))
    features = [torch.from_numpy(store.read_features(np.arange(2), n)) for n in loaded.layer_names]
    image = torch.from_numpy(store.read_images(np.arange(2))).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        a, b, c = model(features, image), loaded.model(features, image), trained.model(features, image)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["sm1"], c["sm1"])
    assert loaded.manifest == store.manifest and loaded.class_names == store.class_names
    assert loaded.info == {"note": "test"} and loaded.postprocess == trained.postprocess


def test_resume_refuses_changed_settings(tmp_path, conv_store):
    run = tmp_path / "run"
    train(TrainConfig(store=str(conv_store), out=run, epochs=1, batch_size=4, progress=False))
    with pytest.raises(TrainingError, match="changed: epochs"):
        train(TrainConfig(store=str(conv_store), out=run, epochs=3, batch_size=4, progress=False, resume=True))


def test_killed_training_resumes_to_the_same_weights(tmp_path, conv_store):
    """Stop a run after epoch 2 of 3 (kill -9 between epochs), resume it: same weights as a run never stopped."""
    args = [CELLGAP, "train", "--store", str(conv_store), "--batch-size", "4", "--epochs", "3", "--no-progress",
            "--seed", "1"]
    reference = tmp_path / "reference"
    subprocess.run(args + ["--out", str(reference)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(args + ["--out", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "epoch 2/3:" in line:
            assert "eta" in line, line
            process.kill()
            break
    process.wait()
    state = torch.load(killed / "state.pt", weights_only=False)
    assert state["epoch"] in (2, 3)
    resumed = subprocess.run(args + ["--out", str(killed), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(reference / "last.safetensors").model.state_dict()
    b = load_checkpoint(killed / "last.safetensors").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_existing_run_dir_without_resume_is_refused(trained_run, conv_store):
    with pytest.raises(TrainingError, match="use --resume"):
        train(TrainConfig(store=str(conv_store), out=trained_run, epochs=1, progress=False))
    foreign = trained_run.parent / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(TrainConfig(store=str(conv_store), out=foreign, epochs=1, resume=True, progress=False))


def test_yaml_config_is_validated_once(tmp_path, conv_store):
    path = tmp_path / "train.yaml"
    path.write_text(f"store: {conv_store}\nout: {tmp_path / 'r'}\nepochs: 3\naugment: d4\nloss: {{celltype: 4}}\n")
    config = load_train_config(path, {"epochs": 5, "lr": None})
    assert config.epochs == 5 and config.augment == "d4" and config.loss.celltype == 4
    path.write_text("store: x\nout: y\nepochs: zero\n")
    from cellgap.decoder.errors import DecoderError

    with pytest.raises(DecoderError, match="'epochs'"):
        load_train_config(path, {})
    path.write_text("store: x\nout: y\nlearning_rate: 1\n")
    with pytest.raises(DecoderError, match="learning_rate"):
        load_train_config(path, {})


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a usable cellgap checkpoint"):
        load_checkpoint(bad)
