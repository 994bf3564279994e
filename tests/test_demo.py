"""The demo (README quick start) runs end to end on a small sample, and a rerun reuses its work."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns(tmp_path):
    args = [CELLGAP, "demo", "--out", str(tmp_path / "demo"), "--tiles", "12", "--epochs", "2"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    for step in ("[1/4] extract", "[2/4] train", "[3/4] predict", "[4/4] evaluate", "PQ", "overlays:"):
        assert step in first.stdout
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["n_images"] >= 1 and metrics["instance"]["pq"] is not None
    assert list((tmp_path / "demo" / "predictions" / "overlays").glob("*.png"))
    again = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert "already stored; nothing to do" in again.stdout
