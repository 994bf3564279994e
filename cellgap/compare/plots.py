"""The report's pictures (matplotlib Agg): a bar plot per metric, a per-class PQ+ heat map, a gallery per data set.

The gallery shows the same test tiles for every (encoder, layer set): the image, the ground truth
and each model's prediction drawn with `decoder.outputs.overlay` (the first finished seed's run).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cellgap.compare.config import slug
from cellgap.compare.grid import Grid
from cellgap.compare.report import SCORES, ResultTable
from cellgap.compare.runs import PREDICTIONS
from cellgap.compare.stores import StoreOutcome
from cellgap.decoder.postprocess import Instances


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _row_name(row: tuple[str, str]) -> str:
    return row[0] if row[1] == "default" else f"{row[0]} ({row[1]})"


def bar_plots(table: ResultTable, folder: Path) -> list[Path]:
    """One PNG per headline metric: bars per (encoder, layers), one colour per data set, std as error bars."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in SCORES:
        columns = [c for c in table.columns if c.metric == metric]
        if not columns or all(table.cell(r, c).mean is None for r in table.rows for c in columns):
            continue
        x = np.arange(len(table.rows))
        width = 0.8 / len(columns)
        figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(table.rows) + 1.5), 3.6))
        for k, column in enumerate(columns):
            cells = [table.cell(r, column) for r in table.rows]
            means = [np.nan if c.mean is None else c.mean for c in cells]
            errors = [0.0 if c.std is None else c.std for c in cells]
            axis.bar(x + (k - (len(columns) - 1) / 2) * width, means, width, yerr=errors, capsize=3,
                     label=column.dataset)
        axis.set_xticks(x, [_row_name(r) for r in table.rows], rotation=30, ha="right")
        axis.set_ylabel(metric)
        axis.set_ylim(0, 1)
        axis.set_title(f"{metric} (mean ± std over seeds)")
        axis.legend(fontsize=8)
        figure.tight_layout()
        path = folder / f"bar-{slug(metric.replace('+', '-plus')).lower()}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def class_heatmap(table: ResultTable, path: Path) -> Path | None:
    """Rows (encoder, layers) x columns (data set: class) of the mean PQ+; None when no data set has classes."""
    columns = [c for c in table.columns if c.kind == "class"]
    if not columns:
        return None
    plt = _pyplot()
    values = np.array([[np.nan if table.cell(r, c).mean is None else table.cell(r, c).mean for c in columns]
                       for r in table.rows])
    figure, axis = plt.subplots(figsize=(max(4.0, 0.9 * len(columns) + 2.5), max(2.5, 0.45 * len(table.rows) + 1.5)))
    image = axis.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), [f"{c.dataset}: {c.metric.removeprefix('PQ+ ')}" for c in columns],
                    rotation=35, ha="right")
    axis.set_yticks(range(len(table.rows)), [_row_name(r) for r in table.rows])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                axis.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if values[i, j] < 0.5 else "black")
    axis.set_title("PQ+ per class (mean over seeds)")
    figure.colorbar(image, ax=axis, fraction=0.04)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def instances_of_maps(instances: np.ndarray, classes: np.ndarray | None) -> Instances:
    """Instances from (H,W) instance and class maps: ids made 1..n, each cell's class its most frequent one."""
    from skimage.segmentation import relabel_sequential

    labels = relabel_sequential(np.asarray(instances, dtype=np.int64))[0].astype(np.int32)
    n = int(labels.max())
    types = np.ones(n, np.int32)
    if classes is not None and n:
        flat, kinds = labels.ravel(), np.asarray(classes).ravel().astype(np.int64)
        counts = np.zeros((n + 1, int(kinds.max()) + 1), np.int64)
        np.add.at(counts, (flat, kinds), 1)
        counts[:, 0] = 0
        majority = counts[1:].argmax(axis=1)
        types = np.where(counts[1:].max(axis=1) > 0, majority, 1).astype(np.int32)
    return Instances(labels=labels, classes=types, scores=np.ones(n, np.float32), confidences=np.ones(n, np.float32))


def _unit_rgb(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """A 0..255 colour as matplotlib takes it."""
    red, green, blue = rgb
    return red / 255, green / 255, blue / 255


def gallery(grid: Grid, dataset: str, store: StoreOutcome, finished: set[str], report_dir: Path, n_tiles: int,
            path: Path) -> Path | None:
    """The first `n_tiles` test tiles: image, ground truth, and each (encoder, layers) prediction side by side."""
    from matplotlib.patches import Patch

    from cellgap.decoder.outputs import class_color, overlay
    from cellgap.featurestore.store.reader import open_store

    if n_tiles <= 0:
        return None
    source = open_store(store.path)
    indices = source.indices("test")[:n_tiles]
    columns: list[tuple[str, Path]] = []
    for row in grid.rows:
        runs = [r for r in grid.runs if r.row == row and r.store.dataset.name == dataset and r.key in finished]
        if runs:
            columns.append((_row_name(row), min(runs, key=lambda r: r.seed).run_dir(report_dir) / PREDICTIONS))
    if len(indices) == 0 or not columns:
        return None
    plt = _pyplot()
    images = source.read_images(indices)
    truth, truth_classes = source.read_labels(indices)
    names = source.class_names
    size = 2.3
    width = len(columns) + 2
    figure, axes = plt.subplots(len(indices), width, figsize=(size * width, size * len(indices)), squeeze=False)
    for i, index in enumerate(indices):
        name = source.names[int(index)]
        truth_drawn = overlay(images[i], instances_of_maps(truth[i], truth_classes[i]), names)
        panels = [("image", images[i]), ("ground truth", truth_drawn)]
        for title, folder in columns:
            label_file = folder / "labels" / f"{name}.npy"
            if label_file.exists():
                maps = np.load(label_file)
                panels.append((title, overlay(images[i], instances_of_maps(maps[..., 0], maps[..., 1]), names)))
            else:
                panels.append((title, np.full_like(images[i], 255)))
        for axis, (title, picture) in zip(axes[i], panels):
            axis.imshow(picture)
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_title(title, fontsize=8)
        axes[i][0].set_ylabel(name, fontsize=7)
    figure.suptitle(f"{dataset}: test tiles (first seed of each run)", fontsize=9)
    handles = [Patch(color=_unit_rgb(class_color(k)), label=name) for k, name in enumerate(names, start=1)]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.04 if handles else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
