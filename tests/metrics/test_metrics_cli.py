"""`cellgap evaluate` on files of each format, its errors, and `cellgap bench metrics`."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from cellgap import cli as cellgap_cli
from cellgap.core.clitools import OneLineParser
from cellgap.metrics import EvaluationAccumulator
from cellgap.metrics import cli as metrics_cli


def metrics_parser() -> OneLineParser:
    """The gatherer's parser layout with only the metrics commands registered."""
    parser = OneLineParser(prog="cellgap")
    cellgap_cli.add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    bench = commands.add_parser("bench").add_subparsers(dest="bench", required=True, parser_class=OneLineParser)
    metrics_cli.register(commands, bench)
    return parser


@pytest.fixture
def run_cellgap(monkeypatch, capsys):
    """Run `cellgap ARGS...` through the real entry point; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cellgap_cli, "build_parser", metrics_parser)

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = cellgap_cli.main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def tiles(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """n label maps (ids 1..k) and class maps (1..3)."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((n, size, size), np.int32)
    cls = np.zeros((n, size, size), np.uint8)
    for t in range(n):
        for k in range(1, 6):
            r, c = rng.integers(0, size - 6, 2)
            inst[t, r:r + 5, c:c + 5] = k
            cls[t, r:r + 5, c:c + 5] = rng.integers(1, 4)
    return inst, cls


def direct_report(gt: tuple[np.ndarray, np.ndarray], pred: tuple[np.ndarray, np.ndarray], **kwargs) -> dict:
    acc = EvaluationAccumulator(**kwargs)
    for i in range(gt[0].shape[0]):
        acc.add(gt[0][i], pred[0][i], gt[1][i], pred[1][i])
    return acc.reduce().to_json_dict()


def write_conic(root: Path, inst: np.ndarray, cls: np.ndarray) -> str:
    root.mkdir(parents=True)
    np.save(root / "labels.npy", np.stack([inst, cls.astype(np.int32)], -1))
    return f"conic:{root}"


def write_pannuke(root: Path, inst: np.ndarray, cls: np.ndarray, tissues: list[str]) -> str:
    root.mkdir(parents=True)
    masks = np.zeros(inst.shape + (6,), np.float64)
    for c in range(1, 6):
        masks[..., c - 1] = np.where(cls == c, inst, 0)
    masks[..., 5] = inst == 0
    np.save(root / "masks.npy", masks)
    np.save(root / "types.npy", np.array(tissues))
    return f"pannuke:{root}"


def test_evaluate_conic_writes_json_and_csv(run_cellgap, tmp_path):
    gt, pred = tiles(3, 0), tiles(3, 1)
    out, per_image = tmp_path / "out" / "m.json", tmp_path / "rows.csv"
    code, stdout, _ = run_cellgap("evaluate", "--gt", write_conic(tmp_path / "gt", *gt),
                              "--pred", write_conic(tmp_path / "pred", *pred), "--json", str(out),
                              "--per-image", str(per_image))
    assert code == 0
    assert "Instance (HoVer-Net" in stdout and "mPQ+" in stdout
    written = json.loads(out.read_text())
    assert written["class_names"]["1"] == "Neutrophil" and len(written["class_names"]) == 6
    assert written == json.loads(json.dumps(direct_report(gt, pred, n_classes=6, class_names=(
        "Neutrophil", "Epithelial", "Lymphocyte", "Plasma", "Eosinophil", "Connective"))))
    rows = list(csv.DictReader(per_image.open()))
    assert [r["name"] for r in rows] == ["00000", "00001", "00002"]
    assert np.mean([float(r["pq"]) for r in rows]) == pytest.approx(written["instance"]["pq"], abs=1e-15)


def test_evaluate_pannuke_with_tissues_and_magnification(run_cellgap, tmp_path):
    gt, pred = tiles(4, 2), tiles(4, 3)
    tissues = ["Breast", "Breast", "Colon", "Liver"]
    out = tmp_path / "m.json"
    code, _, _ = run_cellgap("evaluate", "--gt", write_pannuke(tmp_path / "gt", *gt, tissues),
                         "--pred", write_pannuke(tmp_path / "pred", *pred, tissues),
                         "--magnification", "20", "--json", str(out))
    assert code == 0
    written = json.loads(out.read_text())
    assert written["detection"]["radius"] == 6.0
    assert set(written["pannuke"]["tissue"]) == {"Breast", "Colon", "Liver"}
    assert list(written["class_names"].values())[0] == "Neoplastic"
    direct = direct_report(gt, pred, n_classes=5, radius=6.0)
    n_used = written["instance"].pop("n_used")
    assert n_used == direct["instance"].pop("n_used")
    assert written["instance"] == pytest.approx(direct["instance"])  # the reader renumbers ids by channel
    assert written["conic"]["pq_plus"] == pytest.approx(direct["conic"]["pq_plus"])


def test_evaluate_folder_npy_against_mat_paired_by_name(run_cellgap, tmp_path):
    gt, pred = tiles(3, 4), tiles(3, 5)
    names = ["b", "a", "c"]
    (tmp_path / "gt" / "labels").mkdir(parents=True)
    (tmp_path / "pred" / "labels").mkdir(parents=True)
    for i, name in enumerate(names):
        np.save(tmp_path / "gt" / "labels" / f"{name}.npy", np.stack([gt[0][i], gt[1][i].astype(np.int32)], -1))
        savemat(tmp_path / "pred" / "labels" / f"{name}.mat",
                {"inst_map": pred[0][i] * 1000, "type_map": pred[1][i].astype(np.int32)})
    out = tmp_path / "m.json"
    code, _, err = run_cellgap("evaluate", "--gt", f"folder:{tmp_path / 'gt'}", "--pred", f"folder:{tmp_path / 'pred'}",
                           "--classes", "3", "--radius", "9.5", "--json", str(out))
    assert code == 0, err
    written = json.loads(out.read_text())
    assert written["detection"]["radius"] == 9.5
    assert written == json.loads(json.dumps(direct_report(gt, pred, n_classes=3, radius=9.5)))


def test_evaluate_untyped_folder_pairs_by_position_when_names_differ(run_cellgap, tmp_path):
    gt, _ = tiles(2, 6)
    for side, prefix in (("gt", "x"), ("pred", "y")):
        (tmp_path / side / "labels").mkdir(parents=True)
        for i in range(2):
            np.save(tmp_path / side / "labels" / f"{prefix}{i}.npy", gt[i])
    out = tmp_path / "m.json"
    code, _, _ = run_cellgap("evaluate", "--gt", f"folder:{tmp_path / 'gt'}", "--pred", f"folder:{tmp_path / 'pred'}",
                         "--json", str(out))
    assert code == 0
    written = json.loads(out.read_text())
    assert written["instance"]["dq"] == 1.0 and written["conic"]["mpq_plus"] is None


def test_evaluate_errors_exit_2_with_one_line(run_cellgap, tmp_path):
    gt3, gt2 = tiles(3, 7), tiles(2, 7)
    three = write_conic(tmp_path / "three", *gt3)
    code, _, err = run_cellgap("evaluate", "--gt", three, "--pred", write_conic(tmp_path / "two", *gt2))
    assert code == 2 and "3 images" in err and "2" in err and err.count("\n") == 1
    small = tiles(3, 7, size=16)
    code, _, err = run_cellgap("evaluate", "--gt", three, "--pred", write_conic(tmp_path / "small", *small))
    assert code == 2 and "shape" in err
    code, _, err = run_cellgap("evaluate", "--gt", f"tiff:{tmp_path}", "--pred", three)
    assert code == 2 and "format" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.npy").write_bytes(b"not a numpy file")
    code, _, err = run_cellgap("evaluate", "--gt", three, "--pred", f"conic:{broken}")
    assert code == 2 and err.startswith("cellgap: error:")
    code, _, err = run_cellgap("evaluate", "--gt", three, "--pred", three, "--radius", "5", "--magnification", "40")
    assert code == 2 and "not allowed" in err


def test_bench_metrics_prints_the_comparison(run_cellgap):
    code, stdout, _ = run_cellgap("bench", "metrics", "--tiles", "1")
    assert code == 0
    lines = stdout.splitlines()
    assert "nuclei/tile" in lines[1] and "speed-up" in lines[1]
    rows = [line.split() for line in lines[2:5]]
    assert len(rows) == 3 and all(row[3].endswith("x") for row in rows)
    assert all(float(row[4]) <= 1e-6 for row in rows)  # identical PQ up to the two epsilons


def test_bench_without_cellseg_metrics_says_how_to_install(run_cellgap, monkeypatch):
    monkeypatch.setitem(sys.modules, "cellseg_metrics", None)
    code, _, err = run_cellgap("bench", "metrics", "--tiles", "1")
    assert code == 2 and "pip install cellseg-metrics" in err
