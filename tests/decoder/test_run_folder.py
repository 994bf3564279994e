"""Run folders after a kill: the training state is one unit, and a run that never finished an epoch starts afresh."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from cellgap.decoder.checkpoint import BEST, LAST, STATE, load_checkpoint
from cellgap.decoder.errors import TrainingError
from cellgap.decoder.training.config import TrainConfig
from cellgap.decoder.training.loop import train


def _config(store, out, epochs, **options) -> TrainConfig:
    return TrainConfig(store=str(store), out=out, epochs=epochs, batch_size=4, seed=2, progress=False, **options)


def _epochs_logged(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a, b) -> None:
    first, second = load_checkpoint(a / LAST).model.state_dict(), load_checkpoint(b / LAST).model.state_dict()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, conv_store):
    """Two epochs of a three-epoch run, the same run after one epoch, and the run never stopped."""
    root = tmp_path_factory.mktemp("runs")
    for name, epochs in (("one", 1), ("two", 2), ("three", 3)):
        train(_config(conv_store, root / name, epochs).model_copy(update={"epochs": epochs}))
    for name in ("one", "two"):  # --resume needs the settings of the run it continues: as if started with 3
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, "epochs": 3}))
    return root


def test_weights_newer_than_the_state_are_not_resumed_from(tmp_path, runs, conv_store, caplog):
    """A kill after last.safetensors was replaced but before the state: the state's epoch is the one resumed."""
    run = tmp_path / "run"
    shutil.copytree(runs / "one", run)
    shutil.copy(runs / "two" / LAST, run / LAST)  # epoch 2's weights beside epoch 1's state
    train(_config(conv_store, run, 3, resume=True))
    assert "from epoch 2, the training state from epoch 1" in caplog.text
    assert _epochs_logged(run) == [1, 2, 3]
    _same_weights(run, runs / "three")


def test_a_state_without_weights_must_match_last_safetensors(tmp_path, runs, conv_store):
    """States of earlier versions pair with last.safetensors: epochs that disagree are refused, not trained twice."""
    run = tmp_path / "run"
    shutil.copytree(runs / "one", run)
    state = torch.load(run / STATE, weights_only=False)
    del state["model"]
    torch.save(state, run / STATE)
    shutil.copy(runs / "two" / LAST, run / LAST)
    with pytest.raises(TrainingError, match="last.safetensors is from epoch 2 but state.pt from epoch 1"):
        train(_config(conv_store, run, 3, resume=True))
    shutil.copy(runs / "one" / LAST, run / LAST)  # the matching pair resumes
    train(_config(conv_store, run, 3, resume=True))
    _same_weights(run, runs / "three")


def test_a_log_line_lost_after_the_state_was_written_is_restored(tmp_path, runs, conv_store):
    run = tmp_path / "run"
    shutil.copytree(runs / "two", run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # killed before epoch 2's line was appended
    train(_config(conv_store, run, 3, resume=True))
    assert _epochs_logged(run) == [1, 2, 3]


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_killed_in_its_first_epoch_starts_afresh(tmp_path, runs, conv_store, resume):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "manifest.json", BEST, "validation.json"):  # all a first epoch leaves before its state
        shutil.copy(runs / "one" / name, run / name)
    (run / f".{STATE}.0123456789abcdef.partial").write_bytes(b"half a state")
    train(_config(conv_store, run, 1, resume=resume))
    assert _epochs_logged(run) == [1]
    assert not list(run.glob("*.partial")) and (run / STATE).is_file()
    _same_weights(run, runs / "one")


def test_resume_of_a_folder_that_does_not_exist_starts_the_run(tmp_path, conv_store):
    run = tmp_path / "new"
    train(_config(conv_store, run, 1, resume=True))
    assert _epochs_logged(run) == [1]
