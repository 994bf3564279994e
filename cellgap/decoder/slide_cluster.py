"""Many slides on dask.distributed: one slide per task, each worker loading the model and writing its slide's outputs.

A slide's outputs are assembled from its own parts folder and moved into place by the task that
predicted it, exactly as a local run does, so tasks never share a file, a killed job resumes slide
by slide (and region by region), and the outputs do not depend on which worker took a slide.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cellgap.decoder.errors import PredictionError
from cellgap.decoder.slides import SlideSettings, SlideSummary, predict_slides


def slide_task(run_dir: Path, slide: Path, out: Path, settings: SlideSettings, device: str, weights: Path | None,
               n_local_workers: int) -> SlideSummary:
    """One slide on a worker (the machine's cores shared among local workers)."""
    from cellgap.featurestore.extract.replicas import set_cpu_threads

    if n_local_workers > 1:
        set_cpu_threads(n_local_workers)
    (summary,) = predict_slides(run_dir, [slide], out, settings, device=device, weights=weights, progress=False)
    return summary


def predict_slides_on_dask(run_dir: Path, slides: list[Path], out: Path, settings: SlideSettings, *,
                           scheduler: str | None, workers: int | None, device: str = "auto",
                           weights: Path | None = None,
                           on_slide: Callable[[SlideSummary], None] | None = None) -> list[SlideSummary]:
    """Every slide as its own task; summaries in the order of `slides`. Paths must be visible to every worker."""
    from distributed import as_completed

    from cellgap.core.cluster import ClusterError, dask_client

    names = [Path(slide).name.split(".")[0] for slide in slides]
    if len(set(names)) != len(names):
        raise PredictionError("two slides share a name; their outputs would overwrite each other: "
                              + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    try:
        with dask_client(scheduler, workers) as (client, local):
            shared = max(1, len(client.nthreads())) if local else 1
            futures = {client.submit(slide_task, run_dir, Path(slide).resolve(), out.resolve(), settings, device,
                                     weights, shared, pure=False, key=f"cellgap-slide-{name}"): name
                       for slide, name in zip(slides, names)}
            done: dict[str, SlideSummary] = {}
            try:
                for future in as_completed(futures):
                    summary = future.result()
                    done[futures[future]] = summary
                    if on_slide is not None:
                        on_slide(summary)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    except ClusterError as error:
        raise PredictionError(str(error)) from None
    return [done[name] for name in names]
