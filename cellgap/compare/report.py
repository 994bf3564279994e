"""The results table: rows (encoder, layer set), columns per data set, mean and std over seeds, costs.

Score columns per data set: PQ, mPQ+ (typed data sets), bPQ and mPQ (PanNuke), F1_d, PQ+ per
class. Cost columns: extraction tiles/s (recorded when the store was built), feature bytes per tile
on disk, training seconds per epoch. The best value of every column is marked (highest score,
fastest, smallest). Written as results.csv (numbers), results.md (the paper-like table) and
runs.csv (one row per run).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cellgap.compare.grid import Grid, RunJob
from cellgap.compare.runs import read_metrics, read_run_record
from cellgap.compare.stores import StoreOutcome
from cellgap.metrics.results import MetricsReport

Row = tuple[str, str]  # (encoder label, layer set)
Extractor = Callable[[MetricsReport], float | None]
SCORES = ("PQ", "mPQ+", "bPQ", "mPQ", "F1_d")  # the headline metrics (bar plots), per-class PQ+ aside
COSTS = {"tiles/s": ("extraction tiles/s", "max"), "KiB/tile": ("feature KiB/tile on disk", "min"),
         "s/epoch": ("training s/epoch", "min")}


@dataclass(frozen=True)
class Column:
    dataset: str
    metric: str  # PQ, mPQ+, bPQ, mPQ, F1_d, "PQ+ <class>", tiles/s, KiB/tile, s/epoch
    kind: Literal["score", "class", "cost"]
    better: Literal["max", "min"] = "max"

    @property
    def title(self) -> str:
        return f"{self.dataset} {self.metric}"


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    not_finite: int = 0  # runs whose value was NaN or infinite: counted, never averaged in or hidden

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof=1); None with fewer than two values."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


@dataclass
class ResultTable:
    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[Row, Column], Cell]
    seeds: tuple[int, ...]

    def cell(self, row: Row, column: Column) -> Cell:
        return self.cells.get((row, column), Cell())

    def best(self, column: Column) -> float | None:
        means = [m for m in (self.cell(r, column).mean for r in self.rows) if m is not None]
        if not means:
            return None
        return max(means) if column.better == "max" else min(means)

    def clear_best(self, column: Column) -> Row | None:
        """The row whose mean leads the column by more than one standard deviation (of either of the
        two leaders), or by a visible margin when there is no spread; None for a tie or a lead within noise."""
        scored = [(self.cell(r, column), r) for r in self.rows if self.cell(r, column).mean is not None]
        if not scored:
            return None
        scored.sort(key=lambda item: item[0].mean, reverse=column.better == "max")  # type: ignore[arg-type,return-value]
        if len(scored) == 1:
            return scored[0][1]
        (first, row), (second, _) = scored[0], scored[1]
        gap = abs(first.mean - second.mean)  # type: ignore[operator]
        noise = max(first.std or 0.0, second.std or 0.0)
        if _format(first.mean, column) == _format(second.mean, column) or gap <= noise:
            return None
        return row

    def columns_of(self, dataset: str, kinds: Iterable[str] = ("score", "class", "cost")) -> list[Column]:
        return [c for c in self.columns if c.dataset == dataset and c.kind in kinds]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(c.dataset for c in self.columns))


def score_extractors(manifest_format: str, class_names: tuple[str, ...]) -> list[tuple[str, str, Extractor]]:
    """(metric, kind, extractor) of the score columns defined for a data set."""
    found: list[tuple[str, str, Extractor]] = [("PQ", "score", lambda r: r.instance.pq)]
    if class_names:
        found.append(("mPQ+", "score", lambda r: r.conic.mpq_plus))
    if manifest_format == "pannuke":
        found += [("bPQ", "score", lambda r: r.pannuke.bpq), ("mPQ", "score", lambda r: r.pannuke.mpq)]
    found.append(("F1_d", "score", lambda r: r.detection.f1_d))
    for k, name in enumerate(class_names, start=1):
        found.append((f"PQ+ {name}", "class", _class_pq_plus(k)))
    return found


def _class_pq_plus(class_id: int) -> Extractor:
    return lambda r: r.conic.pq_plus.get(str(class_id))


def _store_of(run: RunJob, stores: dict[tuple, StoreOutcome]) -> StoreOutcome | None:
    return stores.get(run.store.settings_key)


def build_table(grid: Grid, stores: dict[tuple, StoreOutcome], finished: set[str], report_dir: Path) -> ResultTable:
    """Aggregate the finished runs' metrics.json (and run records) per (row, data set) over seeds."""
    columns: list[Column] = []
    cells: dict[tuple[Row, Column], Cell] = {}
    for dataset in grid.datasets:
        runs = [r for r in grid.runs if r.store.dataset.name == dataset.name]
        outcome = next((o for r in runs if (o := _store_of(r, stores)) is not None), None)
        fmt = outcome.manifest.dataset.format if outcome else dataset.spec.partition(":")[0]
        class_names = outcome.manifest.dataset.class_names if outcome else ()
        extractors = score_extractors(fmt, class_names)
        scored = [Column(dataset.name, metric, kind) for metric, kind, _ in extractors]  # type: ignore[arg-type]
        costs = [Column(dataset.name, name, "cost", better)  # type: ignore[arg-type]
                 for name, (_, better) in COSTS.items()]
        columns += scored + costs
        for run in runs:
            store = _store_of(run, stores)
            if store is not None:
                if store.tiles_per_second is not None:
                    cells[(run.row, costs[0])] = Cell([store.tiles_per_second])
                if store.feature_bytes_per_tile is not None:
                    cells[(run.row, costs[1])] = Cell([store.feature_bytes_per_tile / 2**10])
            if run.key not in finished:
                continue
            report = read_metrics(run.run_dir(report_dir))
            if report is None:
                continue
            for column, (_, _, extract) in zip(scored, extractors):
                value = extract(report)
                if value is not None and math.isfinite(value):
                    cells.setdefault((run.row, column), Cell()).values.append(float(value))
                elif value is not None:
                    cells.setdefault((run.row, column), Cell()).not_finite += 1
            seconds = read_run_record(run.run_dir(report_dir)).get("seconds_per_epoch")
            if seconds:
                cells.setdefault((run.row, costs[2]), Cell()).values.append(float(seconds))
    return ResultTable(list(grid.rows), columns, cells, grid.seeds)


def write_csv(table: ResultTable, path: Path) -> Path:
    """One row per (encoder, layers): mean and std of every column, and the number of seeds per data set."""
    header = ["encoder", "layers"]
    for dataset in table.datasets:
        header.append(f"{dataset} seeds")
        for column in table.columns_of(dataset):
            header += [f"{column.title} mean", f"{column.title} std"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in table.rows:
            values: list[object] = [row[0], row[1]]
            for dataset in table.datasets:
                pq = table.columns_of(dataset, ("score",))[0]
                values.append(table.cell(row, pq).n)
                for column in table.columns_of(dataset):
                    cell = table.cell(row, column)
                    values += ["" if cell.mean is None else repr(cell.mean), "" if cell.std is None else repr(cell.std)]
            writer.writerow(values)
    return path


def _format(value: float | None, column: Column) -> str:
    if value is None:
        return "–"
    if column.kind == "cost":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:.3f}"


def markdown_table(table: ResultTable) -> str:
    """The paper-like table: `mean ± std` per cell, the best of each column in bold."""
    header = ["encoder", "layers"] + [c.title for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(table.columns)]
    for row in table.rows:
        cells = [row[0], row[1]]
        for column in table.columns:
            cell = table.cell(row, column)
            text = _format(cell.mean, column)
            if cell.std is not None:
                text += f" ± {_format(cell.std, column)}"
            if table.clear_best(column) == row:
                text = f"**{text}**"
            if cell.not_finite:
                text += f" ({cell.not_finite} of {cell.n + cell.not_finite} runs not finite)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(table: ResultTable, path: Path, *, title: str, notes: list[str]) -> Path:
    seeds = (f"seeds {', '.join(map(str, table.seeds))}" if len(table.seeds) > 1
             else f"seed {table.seeds[0]} (one seed: no standard deviation)")
    legend = (f"Mean ± sample standard deviation over {seeds} (test split); "
              "best value of each column in **bold** when it leads the next by more than one standard deviation "
              "(highest score; for costs the fastest or smallest); runs whose value was not finite are counted "
              "beside the cell, never averaged. "
              "Costs: " + "; ".join(f"`{k}` = {v}" for k, (v, _) in COSTS.items()) + ". `–`: not defined or not run.")
    text = f"# {title}\n\n{legend}\n\n{markdown_table(table)}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    path.write_text(text)
    return path


def write_runs_csv(grid: Grid, finished: set[str], report_dir: Path, path: Path) -> Path:
    """One row per finished run: headline metrics and training time, with its run directory."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "encoder", "layers", "seed", "pq", "mpq_plus", "bpq", "mpq", "f1_d", "aji",
                         "dice1", "seconds_per_epoch", "epochs_run", "run_dir"])
        for run in grid.runs:
            report = read_metrics(run.run_dir(report_dir)) if run.key in finished else None
            if report is None:
                continue
            record = read_run_record(run.run_dir(report_dir))
            values = [report.instance.pq, report.conic.mpq_plus, report.pannuke.bpq, report.pannuke.mpq,
                      report.detection.f1_d, report.instance.aji, report.instance.dice1]
            writer.writerow([run.store.dataset.name, run.label, run.store.layers, run.seed,
                             *["" if v is None else repr(v) for v in values], record.get("seconds_per_epoch", ""),
                             record.get("epochs_run", ""), str(run.run_dir(report_dir).relative_to(report_dir))])
    return path
