"""`cellgap compare` on the small synthetic grid: every artefact, reuse on rerun, new stores for new settings,
reuse by manifest (not folder name), resuming a killed run, dask workers, and one-line config errors.

One real grid run (configs/compare-synthetic.yaml: 3 stores, 6 runs) is shared by the module; the
tests after the first build on its report folder, in file order.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import torch_threads

CELLGAP = str(Path(sys.executable).with_name("cellgap"))
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "compare-synthetic.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per job: fastest on a small, shared CPU


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CELLGAP, "compare", "--no-progress", *args], check=False, capture_output=True, text=True,
                          env=ENV, timeout=600)


def write_config(path: Path, **changes) -> Path:
    values = yaml.safe_load(CONFIG.read_text())
    values.update(changes)
    path.write_text(yaml.safe_dump(values))
    return path


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "report"
    result = compare("--config", str(CONFIG), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture
def one_thread():
    with torch_threads(1):
        yield


def _runs(out: Path) -> dict[tuple[str, str], list[dict]]:
    found: dict[tuple[str, str], list[dict]] = {}
    for metrics in sorted(out.glob("runs/synthetic/*/*/seed*/metrics.json")):
        label, layers = metrics.parts[-4], metrics.parts[-3]
        found.setdefault((label, layers), []).append(json.loads(metrics.read_text()))
    return found


@pytest.mark.slow
def test_grid_produces_every_artefact_from_real_runs(grid):
    out, result = grid
    assert "grid: 1 data set(s) x 3 encoder/layer set(s) x 2 seed(s) = 6 runs on 3 store(s)" in result.stdout
    assert result.stdout.count(": built ") == 3 and result.stdout.count(": trained: ") == 6
    runs = _runs(out)
    assert set(runs) == {("convnext_atto", "default"), ("vit_tiny", "shallow"), ("vit_tiny", "deep")}
    assert all(len(seeds) == 2 for seeds in runs.values())

    rows = {(r["encoder"], r["layers"]): r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == set(runs)
    for key, row in rows.items():
        pq = [m["instance"]["pq"] for m in runs[key]]
        mpq = [m["conic"]["mpq_plus"] for m in runs[key]]
        assert row["synthetic seeds"] == "2"
        assert float(row["synthetic PQ mean"]) == pytest.approx(np.mean(pq))
        assert float(row["synthetic PQ std"]) == pytest.approx(np.std(pq, ddof=1))
        assert float(row["synthetic mPQ+ mean"]) == pytest.approx(np.mean(mpq))
        assert float(row["synthetic F1_d mean"]) == pytest.approx(np.mean([m["detection"]["f1_d"] for m in runs[key]]))
        tumour = [m["conic"]["pq_plus"]["1"] for m in runs[key]]
        assert float(row["synthetic PQ+ tumour mean"]) == pytest.approx(np.mean(tumour))
        for cost in ("tiles/s", "KiB/tile", "s/epoch"):
            assert float(row[f"synthetic {cost} mean"]) > 0
    assert any(float(r["synthetic PQ mean"]) > 0 for r in rows.values())  # trained decoders, not empty outputs

    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    column = header.index("synthetic PQ")
    ranked = sorted(rows, key=lambda k: float(rows[k]["synthetic PQ mean"]), reverse=True)
    first, second = (rows[k] for k in ranked[:2])
    lead = float(first["synthetic PQ mean"]) - float(second["synthetic PQ mean"])
    clear = lead > max(float(first["synthetic PQ std"]), float(second["synthetic PQ std"])) and lead >= 5e-4
    for cells in body:
        assert ("**" in cells[column]) == (clear and (cells[0], cells[1]) == ranked[0])
        assert "±" in cells[column]
    assert {"synthetic mPQ+", "synthetic F1_d", "synthetic PQ+ tumour", "synthetic tiles/s", "synthetic KiB/tile",
            "synthetic s/epoch"} <= set(header)
    assert len(list(csv.DictReader((out / "runs.csv").open()))) == 6

    from PIL import Image

    pictures = ["plots/bar-pq.png", "plots/bar-mpq-plus.png", "plots/bar-f1_d.png", "plots/heatmap-pq-plus.png",
                "gallery/synthetic.png"]
    for name in pictures:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    stores = sorted(out.glob("stores/*.zarr"))
    assert len(stores) == 3 and all(Path(f"{s}.extract.json").is_file() for s in stores)
    for run in out.glob("runs/synthetic/*/*/seed*"):
        assert (run / "model.safetensors").is_file() and any((run / "pred" / "labels").iterdir())


@pytest.mark.slow
def test_rerun_reuses_stores_and_skips_finished_runs(grid):
    out, _ = grid
    stores, runs = mtimes(out / "stores"), mtimes(out / "runs")
    result = compare("--config", str(CONFIG), "--out", str(out), "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(": reused ") == 3 and result.stdout.count(": skipped (finished earlier") == 6
    assert ": built " not in result.stdout and ": trained: " not in result.stdout
    assert "done: 3 reused, 6 skipped" in result.stdout
    assert mtimes(out / "stores") == stores and mtimes(out / "runs") == runs


@pytest.mark.slow
def test_killed_run_resumes(grid, tmp_path):
    """kill -9 while a run trains (after its third epoch), rerun: it resumes instead of starting over."""
    out, _ = grid
    first_encoder = yaml.safe_load(CONFIG.read_text())["encoders"][0]
    config = write_config(tmp_path / "one.yaml", encoders=[first_encoder], seeds=[7])
    args = [CELLGAP, "compare", "--no-progress", "--config", str(config), "--out", str(out)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in process.stderr:
        if "epoch 3/" in line:
            process.kill()
            break
    process.wait()
    run = out / "runs" / "synthetic" / "convnext_atto" / "default" / "seed7"
    assert (run / "state.pt").exists() and not (run / "metrics.json").exists()
    result = compare("--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "seed 7: start (state.pt without metrics)" in result.stdout and "seed 7: resumed: " in result.stdout
    assert "done: 1 resumed, 1 reused" in result.stdout
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "metrics.json").read_text())["instance"]["pq"] is not None


@pytest.mark.slow
def test_changed_encoder_setting_builds_a_new_store(grid, tmp_path):
    out, _ = grid
    encoder = {**yaml.safe_load(CONFIG.read_text())["encoders"][0], "seed": 1}  # other random weights
    config = write_config(tmp_path / "seed1.yaml", encoders=[encoder], seeds=[0])
    before = mtimes(out / "stores")
    old_stores = {p.name for p in out.glob("stores/*.zarr")}
    result = compare("--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    new_stores = {p.name for p in out.glob("stores/*.zarr")} - old_stores
    assert len(new_stores) == 1 and ": built " in result.stdout
    after = mtimes(out / "stores")
    assert all(after.get(name) == stamp for name, stamp in before.items())  # the old stores are untouched
    # the run of seed 0 was trained on the old store's features: set aside and trained again
    assert "trained on features of another store" in result.stdout and ": trained: " in result.stdout
    run = out / "runs" / "synthetic" / "convnext_atto" / "default"
    assert (run / "seed0.replaced-1" / "metrics.json").is_file() and (run / "seed0" / "metrics.json").is_file()
    trained_on = json.loads((run / "seed0" / "compare.json").read_text())["store"]
    assert Path(trained_on).name == new_stores.pop()


@pytest.mark.slow
def test_stores_are_found_by_manifest_not_by_folder_name(grid, tmp_path, one_thread, monkeypatch):
    import cellgap.featurestore.encoders.encoder as encoder_module
    from cellgap.compare.config import load_compare_config
    from cellgap.compare.grid import expand
    from cellgap.compare.stores import new_store_path, prepare_store
    from cellgap.featurestore.extract.plan import plan_extraction
    from cellgap.featurestore.store.catalog import find_compatible, read_manifest

    out, _ = grid
    config = load_compare_config(CONFIG)
    jobs = expand(config).stores
    conv, vit = jobs[0], jobs[2]
    wanted = plan_extraction(conv.extract_config("", config.extract), device="cpu").manifest
    original = find_compatible(out / "stores", wanted)
    assert original is not None

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(original, elsewhere / "my-renamed-features.zarr")
    outcome = prepare_store(conv, tmp_path / "empty", [elsewhere], config.extract)
    assert outcome.action == "reused" and Path(outcome.path) == elsewhere / "my-renamed-features.zarr"

    impostors = tmp_path / "impostors"
    expected = new_store_path(impostors, conv, wanted)
    vit_store = next(p for p in out.glob("stores/*.zarr") if vit.layers in p.name and "vit_tiny" in p.name)
    shutil.copytree(vit_store, expected)  # the expected folder name, another encoder's manifest
    built = []
    construct = encoder_module.FrozenEncoder.__init__

    def counted(self, settings, *args, **kwargs):
        built.append(settings.name)
        construct(self, settings, *args, **kwargs)

    monkeypatch.setattr(encoder_module.FrozenEncoder, "__init__", counted)  # every construction, wherever it is
    outcome = prepare_store(conv, impostors, [], config.extract)
    assert len(built) == 1  # planned and extracted with one encoder
    assert outcome.action == "built" and Path(outcome.path) != expected
    assert Path(outcome.path).name == expected.name.removesuffix(".zarr") + "-2.zarr"
    assert read_manifest(expected).encoder.name == "vit_tiny"
    assert read_manifest(Path(outcome.path)).encoder.weights_sha256 == wanted.encoder.weights_sha256


@pytest.mark.slow
def test_dask_scheduler_runs_jobs_on_its_workers(grid, tmp_path, one_thread):
    from distributed import LocalCluster

    from cellgap.compare.config import parse_compare_config
    from cellgap.compare.runner import run_grid

    out, _ = grid
    values = yaml.safe_load(CONFIG.read_text())
    values["encoders"] = [{**values["encoders"][1], "layers": ["deep"]}]
    values["seeds"] = [0, 3]  # seed 0 is finished, seed 3 is new
    lines: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run_grid(parse_compare_config(values), out, scheduler=cluster.scheduler_address, progress=False,
                           say=lines.append)
    assert summary.failures == []
    assert summary.counts() == {"reused": 1, "skipped": 1, "trained": 1}
    assert (out / "runs" / "synthetic" / "vit_tiny" / "deep" / "seed3" / "metrics.json").is_file()


def test_a_failing_job_is_reported_and_the_grid_goes_on(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    encoders = [{"name": "broken", "encoder": "convnext_atto", "weights": str(broken)}]
    config = write_config(tmp_path / "broken.yaml", encoders=encoders, seeds=[0])
    result = compare("--config", str(config), "--out", str(tmp_path / "report"))
    assert result.returncode == 1
    assert ": FAILED: " in result.stdout and "done: 1 failed" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("cellgap: 1 job(s) failed; first: synthetic / convnext_atto")
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| broken | default | – |" in table and "failed (" in table
    state = json.loads((tmp_path / "report" / "state.json").read_text())["jobs"]
    assert state["run: synthetic / broken / default / seed 0"]["status"] == "not run"


BAD_CONFIGS = [
    ({"datasets": [{"name": "s", "spec": "synthetic:4"}], "encoders": [{"name": "c", "encoder": "convnext_atto",
                                                                        "layers": ["deep"]}]}, "encoders[0].layers[0]"),
    ({"datasets": [{"name": "s", "spec": "synthetic:4"}], "encoders": [{"name": "c", "encoder": "convnext_atto",
                                                                        "colour": "red"}]}, "encoders[0].colour"),
    ({"datasets": [{"name": "s", "spec": "nope:4"}], "encoders": [{"name": "c", "encoder": "convnext_atto"}]},
     "datasets[0].spec"),
    ({"datasets": [{"name": "s", "spec": "synthetic:4"}], "encoders": [{"name": "c", "encoder": "convnext_atto"}],
      "training": {"seed": 3}}, "training.seed"),
    ({"datasets": [{"name": "s", "spec": "synthetic:4"}], "encoders": [{"name": "c", "encoder": "convnext_atto"}],
      "training": {"epochs": 0}}, "training.epochs"),
    ({"datasets": [{"name": "s", "spec": "synthetic:4"}], "encoders": [{"name": "c", "encoder": "convnxt_atto"}]},
     "encoders[0].encoder"),
    ({"encoders": [{"name": "c", "encoder": "convnext_atto"}]}, "datasets"),
]


@pytest.mark.parametrize(("values", "field"), BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_field(values, field, tmp_path, capsys):
    from cellgap.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    assert main(["compare", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("cellgap: error: ") and f"{field}:" in error
    assert not (tmp_path / "out").exists()


def test_broken_yaml_exits_2_with_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("datasets:\n  - name: s\n    spec: [synthetic:4\nencoders: {\n")
    result = compare("--config", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "not valid YAML" in result.stderr


def test_bold_marks_only_a_lead_beyond_the_noise_and_non_finite_runs_are_counted():
    from cellgap.compare.report import Cell, Column, ResultTable, markdown_table

    pq = Column("d", "PQ", "score")
    rows = [("a", "x"), ("b", "x"), ("c", "x")]

    def table(values):
        return ResultTable(rows, [pq], {(r, pq): Cell(list(v)) for r, v in zip(rows, values)}, (0, 1))

    assert table([[0.6, 0.62], [0.4, 0.41], [0.1, 0.1]]).clear_best(pq) == ("a", "x")
    assert table([[0.6, 0.7], [0.58, 0.66], [0.1, 0.1]]).clear_best(pq) is None  # lead 0.03 < std 0.07
    assert table([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).clear_best(pq) is None  # a tie at zero
    noisy = table([[0.5, 0.52], [0.2, 0.2], [0.1, 0.1]])
    noisy.cells[(rows[1], pq)].not_finite = 1
    text = markdown_table(noisy)
    assert "(1 of 3 runs not finite)" in text and text.count("**") == 2
