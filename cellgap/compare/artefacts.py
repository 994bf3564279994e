"""Writing the report folder's artefacts from a finished (or partly failed) grid.

REPORT_DIR/results.csv, results.md, runs.csv, plots/bar-<metric>.png, plots/heatmap-pq-plus.png,
gallery/<dataset>.png; stores/ and runs/ are written by the jobs themselves.
"""
from __future__ import annotations

from pathlib import Path

from cellgap.compare.config import CompareConfig, slug
from cellgap.compare.plots import bar_plots, class_heatmap, gallery
from cellgap.compare.report import (
    build_table,
    write_csv,
    write_markdown,
    write_runs_csv,
)
from cellgap.compare.runner import CompareSummary


def write_report(summary: CompareSummary, config: CompareConfig, *, title: str) -> dict[str, list[Path]]:
    """Every table and picture of the report; returns them by kind."""
    out = summary.report_dir
    grid, finished = summary.grid, summary.finished
    table = build_table(grid, summary.stores, finished, out)
    notes = [f"{job}: failed ({error})" for job, error in summary.failures]
    missing = [r.key for r in grid.runs if r.key not in finished]
    if missing:
        notes.append(f"{len(missing)} of {len(grid.runs)} runs have no results: {'; '.join(missing[:6])}"
                     + (" ..." if len(missing) > 6 else ""))
    written: dict[str, list[Path]] = {
        "tables": [write_csv(table, out / "results.csv"), write_markdown(table, out / "results.md", title=title,
                                                                           notes=notes),
                   write_runs_csv(grid, finished, out, out / "runs.csv")],
        "plots": bar_plots(table, out / "plots"),
        "gallery": [],
    }
    heatmap = class_heatmap(table, out / "plots" / "heatmap-pq-plus.png")
    if heatmap is not None:
        written["plots"].append(heatmap)
    for dataset in grid.datasets:
        store = next((summary.stores[s.settings_key] for s in grid.stores
                      if s.dataset.name == dataset.name and s.settings_key in summary.stores), None)
        if store is None:
            continue
        picture = gallery(grid, dataset.name, store, finished, out, config.gallery.tiles,
                          out / "gallery" / f"{slug(dataset.name)}.png")
        if picture is not None:
            written["gallery"].append(picture)
    return written
