"""The training-curves picture and the metrics log (JSONL + CSV) of a run."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def append_log(run_dir: Path, record: dict[str, Any]) -> None:
    """One line per epoch in metrics.jsonl; metrics.csv is rewritten from it (flat columns)."""
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(record, allow_nan=False, default=_none_for_nan) + "\n")
    records = read_log(run_dir)
    flat = [_flatten(r) for r in records]
    columns = sorted({k for row in flat for k in row}, key=lambda c: (c != "epoch", c))
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(run_dir: Path, epochs: int) -> None:
    """Keep the records of the first `epochs` epochs (a resumed run rewrites what came after its checkpoint)."""
    kept = [r for r in read_log(run_dir) if r["epoch"] <= epochs]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def _none_for_nan(value: Any) -> Any:
    return None


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def draw_curves(run_dir: Path) -> Path:
    """Loss terms and validation metrics per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    path = run_dir / "curves.png"
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in records]
    left.plot(epochs, [r["train"]["loss"] for r in records], label="total", linewidth=2, color="black")
    for part in ("cce", "dice_boundary", "dice_body", "mae", "msge", "celltype"):
        if records and part in records[0]["train"]:
            left.plot(epochs, [r["train"][part] for r in records], label=part, linewidth=1)
    left.set(title="training loss", xlabel="epoch", yscale="log")
    left.legend(fontsize=7)
    validated = [r for r in records if r.get("valid")]
    for metric in ("pq", "mpq_plus", "f1_d", "aji"):
        values = [(r["epoch"], r["valid"].get(metric)) for r in validated if r["valid"].get(metric) is not None]
        if values:
            right.plot(*zip(*values), marker="o", label=metric)
    right.set(title="validation", xlabel="epoch", ylim=(0, 1))
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
