"""Torch's thread count follows the cores that other work leaves idle; an explicit choice wins."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cellgap.core import threads
from cellgap.core.threads import busy_cores, plan_threads


def test_the_plan_takes_the_idle_cores_and_never_fewer_than_one():
    assert plan_threads(environ={}, busy=0.1, cores=2).threads == 2
    assert plan_threads(environ={}, busy=1.0, cores=2).threads == 1
    assert plan_threads(environ={}, busy=5.0, cores=2).threads == 1
    assert plan_threads(environ={}, busy=2.6, cores=8).threads == 5
    assert plan_threads(environ={"OMP_NUM_THREADS": "3"}, busy=2.0, cores=2).threads == 3
    assert plan_threads(4, environ={"OMP_NUM_THREADS": "3"}).threads == 4
    unknown = plan_threads(environ={}, busy=None, cores=2)
    assert unknown.threads == 2 and "cannot be read" in unknown.reason


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_a_spinning_process_is_seen_as_a_busy_core():
    from cellgap.decoder.bench_threads import busy_core

    with busy_core():
        busy = busy_cores(sample_s=0.5)
    assert busy is not None and 0.7 <= busy <= (os.cpu_count() or 1) + 0.01


def test_a_model_command_sets_the_thread_count_before_torch_loads(monkeypatch, tmp_path):
    from cellgap.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # recorded first, so the process's own value comes back after
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("cellgap.cli.busy_cores", lambda: 1.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert main(["predict", "--run", str(tmp_path / "none"), "--store", "x", "--out", str(tmp_path / "o")]) == 2
    assert os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    main(["predict", "--run", str(tmp_path / "none"), "--store", "x", "--out", str(tmp_path / "o")])
    assert os.environ["OMP_NUM_THREADS"] == "2"  # the user's setting is kept
