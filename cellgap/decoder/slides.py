"""`cellgap predict --slides`: every nucleus of whole-slide images, in bounded memory, resumable after a kill.

A slide is read at the run's resolution (resampled when the slide's pixel size differs), region by
region over its tissue. Each region's window (core plus a margin wider than a nucleus) goes
through the same sliding-window prediction as `--images`, is post-processed once, and keeps the
nuclei whose centroid lies in its core: a nucleus cut by a region border is kept once, whole, by
the region that holds its centre. Reading runs a region ahead, and post-processing and writing run
beside the next region's network pass, so the network never waits for the CPU's stitching.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cellgap.core.progress import progress_bar
from cellgap.core.stages import StageClock, measured
from cellgap.decoder.errors import PredictionError
from cellgap.decoder.inference import TileMaps, instances_of
from cellgap.decoder.outputs import cells_of, write_class_names
from cellgap.decoder.pixelsize import run_mpp
from cellgap.decoder.predictor import Predictor, check_run_dir
from cellgap.decoder.slide_outputs import (
    LabelWriter,
    Placement,
    SlidePaths,
    cell_id,
    prepare_parts,
    region_part,
    write_part,
    write_png,
    write_slide_outputs,
)
from cellgap.featurestore.slides.grid import Region, Roi, plan_regions
from cellgap.featurestore.slides.reader import Slide, open_slide
from cellgap.featurestore.slides.resolution import read_scale
from cellgap.featurestore.slides.tissue import detect_tissue, mask_preview

log = logging.getLogger(__name__)


class SlideSettings(BaseModel):
    """How slides are visited; the defaults suit a 256 px tile model at 40x."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region_size: int = Field(1024, ge=64, le=8192, description="core of a region, model pixels")
    margin: int | None = Field(None, ge=0, le=1024, description="pixels read around a core (default: half a tile)")
    mpp: float | None = Field(None, gt=0, description="microns per pixel of the slides, over what they record")
    roi: tuple[int, int, int, int] | None = None
    tissue: bool = True
    labels: bool = False
    min_score: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(8, ge=1, le=1024)
    thumbnail_side: int = Field(2048, ge=64, le=16384)


@dataclass
class SlideSummary:
    name: str
    regions: int
    resumed: int
    cells: int
    seconds: float
    mpp: float
    scale: float
    tissue_fraction: float
    stages: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.cells / self.seconds if self.seconds > 0 else math.nan
        resumed = f", {self.resumed} resumed" if self.resumed else ""
        return (f"{self.name}: {self.cells} nuclei in {self.regions} regions{resumed}, {self.seconds:.1f} s "
                f"({rate:.0f} nuclei/s), read at {self.mpp * self.scale:.3f} mpp, tissue {self.tissue_fraction:.0%}")


def predict_slides(run_dir: Path, slides: list[Path], out: Path, settings: SlideSettings, *, device: str = "auto",
                   weights: Path | None = None, progress: bool = True,
                   clock: StageClock | None = None) -> list[SlideSummary]:
    """Predict every slide into `out`; slides already done by an earlier, killed call resume where they stopped."""
    check_run_dir(run_dir)
    names = [Path(slide).name.split(".")[0] for slide in slides]
    if len(set(names)) != len(names):
        raise PredictionError("two slides share a name; their outputs would overwrite each other: "
                              + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    predictor = Predictor.from_run(run_dir, device=device, weights=weights)
    target_mpp = run_mpp(predictor.checkpoint.manifest)
    out.mkdir(parents=True, exist_ok=True)
    write_class_names(out, predictor.class_names)
    summaries = []
    for path, name in zip(slides, names):
        with open_slide(path, mpp=settings.mpp) as slide:
            summaries.append(_predict_slide(predictor, slide, SlidePaths(out, name), settings, target_mpp,
                                            progress=progress, clock=clock))
    return summaries


def _predict_slide(predictor: Predictor, slide: Slide, paths: SlidePaths, settings: SlideSettings,
                   target_mpp: float, *, progress: bool, clock: StageClock | None) -> SlideSummary:
    started = time.perf_counter()
    slide_mpp = slide.mpp
    if slide_mpp is None:
        raise PredictionError(f"{slide.path}: the slide does not record its pixel size; give --mpp "
                              "(microns per pixel at full resolution, e.g. 0.25 for 40x)")
    scale = read_scale(slide_mpp, target_mpp)
    width, height = slide.dimensions
    with measured(clock, "read"):
        thumbnail, downsample = slide.thumbnail(settings.thumbnail_side)
    tissue = detect_tissue(thumbnail, downsample) if settings.tissue else None
    if tissue is not None:
        write_png(paths.tissue, mask_preview(thumbnail, tissue))
    margin = settings.margin if settings.margin is not None else predictor.tile_size // 2
    try:
        roi = Roi(*settings.roi) if settings.roi is not None else None
        regions = plan_regions(width, height, scale, settings.region_size, margin, tissue=tissue, roi=roi)
    except ValueError as error:
        raise PredictionError(f"{slide.path}: {error}") from None
    plan = {"model": predictor.model_id, "slide": [width, height, slide_mpp], "scale": scale,
            "region_size": settings.region_size, "margin": margin, "roi": settings.roi, "tissue": settings.tissue,
            "min_score": settings.min_score, "regions": [r.index for r in regions], "labels": settings.labels}
    resuming = prepare_parts(paths, plan)
    if not resuming and paths.labels.exists():
        shutil.rmtree(paths.labels)  # labels of another plan
    labels = LabelWriter(paths.labels, width, height) if settings.labels else None
    todo = [r for r in regions if not paths.part(r).is_file()]
    resumed = len(regions) - len(todo)
    if resumed:
        log.info("%s: %d of %d regions already done, resuming", paths.name, resumed, len(regions))
    state = _Progress()
    with progress_bar(len(todo), paths.name, unit="region", enabled=progress) as bar:
        def finish(region: Region, maps: TileMaps, window: tuple[int, int, int, int]) -> None:
            count = _finish_region(predictor, paths, region, maps, Placement(window[0], window[1], scale, slide_mpp),
                                   settings.min_score, labels, clock)
            state.add(count)
            bar.update(1)
            bar.set_postfix_str(f"{state.rate():.0f} nuclei/s")

        _run_pipeline(predictor, slide, todo, scale, settings.batch_size, finish, clock)
    with measured(clock, "write"):
        cells = write_slide_outputs(paths, regions, thumbnail, downsample)
    summary = SlideSummary(paths.name, len(regions), resumed, cells, time.perf_counter() - started, slide_mpp, scale,
                           tissue.fraction if tissue is not None else 1.0,
                           clock.seconds() if clock is not None else {})
    paths.summary.write_text(json.dumps({**summary.__dict__, "slide": str(slide.path), "backend": slide.backend_name,
                                         "width": width, "height": height, "model": predictor.model_id,
                                         "outputs": {"geojson": paths.geojson.name, "cells": paths.cells.name,
                                                     "overlay": paths.overlay.name}}, indent=1))
    shutil.rmtree(paths.parts)
    return summary


class _Progress:
    def __init__(self) -> None:
        self.cells, self.started = 0, time.perf_counter()

    def add(self, cells: int) -> None:
        self.cells += cells

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.cells / elapsed if elapsed > 0 else 0.0


def _run_pipeline(predictor: Predictor, slide: Slide, regions: list[Region], scale: float, batch_size: int,
                  finish: Any, clock: StageClock | None) -> None:
    """Read one region ahead, run the network here, post-process and write beside the next network pass."""
    def read(region: Region) -> np.ndarray:
        x, y, w, h = region.window
        with measured(clock, "read"):
            return slide.read(round(x * scale), round(y * scale), w, h, scale)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slide-read") as reader, \
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slide-post") as post:
        pending: deque[concurrent.futures.Future[None]] = deque()
        upcoming = reader.submit(read, regions[0]) if regions else None
        for i, region in enumerate(regions):
            assert upcoming is not None
            pixels = upcoming.result()
            upcoming = reader.submit(read, regions[i + 1]) if i + 1 < len(regions) else None
            maps = predictor.maps_of_image(pixels, batch_size, clock)
            pending.append(post.submit(finish, region, maps, region.window))
            while len(pending) > 1:  # at most one region waiting for post-processing: bounded memory
                pending.popleft().result()
        while pending:
            pending.popleft().result()


def _finish_region(predictor: Predictor, paths: SlidePaths, region: Region, maps: TileMaps, placement: Placement,
                   min_score: float, labels: LabelWriter | None, clock: StageClock | None) -> int:
    with measured(clock, "postprocess"):
        instances = instances_of(maps, predictor.checkpoint.postprocess).with_min_score(min_score)
        cells = cells_of(instances, predictor.class_names)
        kept = [cell for cell in cells if region.holds(placement.x + cell.centroid[0], placement.y + cell.centroid[1])]
    with measured(clock, "write"):
        if labels is not None:
            lookup = np.zeros(len(instances) + 1, dtype=np.int32)
            for number, cell in enumerate(kept, start=1):
                lookup[cell.id] = cell_id(region, number)
            labels.write(lookup[instances.labels], placement)
        write_part(paths, region, region_part(paths.name, region, kept, placement))
    return len(kept)
