"""`cellgap bench slides`: whole-slide inference as users run it (the same reader, tissue detection,
region pipeline and writers as `predict --slides`), timed per stage, with the process's peak memory."""
from __future__ import annotations

import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cellgap.core.benchtools import report_rows
from cellgap.core.stages import StageClock
from cellgap.decoder.slides import SlideSettings, predict_slides, run_mpp

STAGES = ("read", "encode", "decode", "postprocess", "write")


@dataclass
class SlideBenchRow:
    slide: str
    width: int
    height: int
    read_mpp: float
    tissue_mm2: float
    cells: int
    seconds: float
    nuclei_per_s: float
    s_per_mm2: float
    peak_rss_mib: float
    stage_seconds: dict[str, float]
    slowest_stage: str


def run_slides_bench(run: Path, slide: Path | None, size: int, tissue_fraction: float, region_size: int,
                     device: str, json_path: Path | None) -> SlideBenchRow:
    """Predicts one slide (a synthetic one of `size` x `size` at the run's pixel size unless given) into a
    throw-away folder, so nothing is resumed and every cache is as cold as a first run's."""
    from cellgap.decoder.predictor import Predictor
    from cellgap.featurestore.slides.reader import open_slide
    from cellgap.featurestore.slides.synthetic import write_synthetic_slide

    with tempfile.TemporaryDirectory(prefix="cellgap-bench-slides-") as scratch:
        if slide is None:
            mpp = run_mpp(Predictor.from_run(run, with_encoder=False).checkpoint.manifest)
            print(f"writing a synthetic {size} x {size} slide at {mpp} mpp, {tissue_fraction:.0%} tissue", flush=True)
            slide = write_synthetic_slide(Path(scratch) / "synthetic.tif", size, size, mpp, tissue_fraction)
        with open_slide(slide) as opened:
            width, height = opened.dimensions
        clock = StageClock()
        [summary] = predict_slides(run, [slide], Path(scratch) / "out", SlideSettings(region_size=region_size),
                                   device=device, progress=True, clock=clock)
    stages = {stage: round(clock.seconds().get(stage, 0.0), 3) for stage in STAGES}
    tissue_mm2 = summary.tissue_fraction * width * height * (summary.mpp * 1e-3) ** 2
    row = SlideBenchRow(slide.name, width, height, round(summary.mpp * summary.scale, 4), round(tissue_mm2, 4),
                        summary.cells, round(summary.seconds, 2), round(summary.cells / summary.seconds, 1),
                        round(summary.seconds / tissue_mm2, 2) if tissue_mm2 > 0 else float("nan"),
                        round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), stages,
                        max(stages, key=lambda s: stages[s]))
    report_rows([row], format_row, json_path)
    return row


def format_row(rows: list[SlideBenchRow]) -> str:
    lines = []
    for row in rows:
        total = sum(row.stage_seconds.values()) or 1.0
        shares = "  ".join(f"{stage} {seconds / total:.0%}" for stage, seconds in row.stage_seconds.items())
        lines += [f"{row.slide}: {row.width} x {row.height} px read at {row.read_mpp} mpp, "
                  f"{row.tissue_mm2:.2f} mm2 of tissue",
                  f"  {row.cells} nuclei in {row.seconds:.1f} s: {row.nuclei_per_s:.0f} nuclei/s, "
                  f"{row.s_per_mm2:.1f} s/mm2 of tissue, peak memory {row.peak_rss_mib:.0f} MiB",
                  f"  stage time (summed over the pipeline's threads): {shares}; slowest: {row.slowest_stage}"]
    return "\n".join(lines)
