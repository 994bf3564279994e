"""One run job: train a decoder from a store (or resume or skip it), predict the test split, score it.

A run directory is finished when its metrics.json is valid and it was trained with the wanted
settings on features of the wanted store (checked by manifest). One with state.pt but no metrics
is resumed (`train(resume=True)`); one trained with other settings or features is moved aside to
`seed<k>.replaced-<n>` and trained again; one with no completed epoch is started over.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cellgap.compare.config import CompareConfig
from cellgap.compare.errors import CompareError
from cellgap.compare.grid import RunJob
from cellgap.compare.stores import StoreOutcome
from cellgap.core.atomic import write_atomically
from cellgap.decoder.training.config import TrainConfig
from cellgap.featurestore.errors import ManifestMismatchError
from cellgap.featurestore.store.manifest import Manifest, check_compatible
from cellgap.metrics.detection import radius_at
from cellgap.metrics.results import MetricsReport

log = logging.getLogger(__name__)
METRICS, RUN_RECORD, PREDICTIONS = "metrics.json", "compare.json", "pred"
STATE, CONFIG, MANIFEST = "state.pt", "config.json", "manifest.json"
# Settings that may differ between the run on disk and the wanted one: paths (a moved report folder) and
# options that do not change results.
_IGNORED = {"store", "out", "resume", "progress", "device", "loader_threads"}
RunStatus = Literal["new", "finished", "resume", "stale"]


@dataclass(frozen=True)
class RunOutcome:
    key: str
    run_dir: str
    action: Literal["trained", "resumed", "skipped"]
    headline: dict[str, float | None]
    seconds_per_epoch: float | None
    seconds: float

    def line(self) -> str:
        shown = ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in self.headline.items())
        epoch = "" if self.seconds_per_epoch is None else f"; {self.seconds_per_epoch:.1f} s/epoch"
        return f"{self.action}: test {shown}{epoch}"


def read_metrics(run_dir: Path) -> MetricsReport | None:
    """The run's test metrics, or None when missing or damaged."""
    try:
        return MetricsReport.model_validate_json((Path(run_dir) / METRICS).read_text())
    except (OSError, ValueError, ValidationError):
        return None


def read_run_record(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def headline(report: MetricsReport) -> dict[str, float | None]:
    return {"PQ": report.instance.pq, "mPQ+": report.conic.mpq_plus, "F1_d": report.detection.f1_d}


def skipped_outcome(job: RunJob, run_dir: Path, started: float | None = None) -> RunOutcome:
    """The outcome of a run found finished: its stored headline and s/epoch; seconds since `started` (else 0)."""
    report = read_metrics(run_dir)
    if report is None:  # found finished moments ago; gone or damaged since
        raise CompareError(f"{run_dir}: {METRICS} is missing or damaged")
    seconds_per_epoch = read_run_record(run_dir).get("seconds_per_epoch")
    seconds = 0.0 if started is None else time.perf_counter() - started
    return RunOutcome(job.key, str(run_dir), "skipped", headline(report), seconds_per_epoch, seconds)


def _saved(run_dir: Path) -> tuple[dict[str, Any] | None, Manifest | None]:
    try:
        config = json.loads((run_dir / CONFIG).read_text())
        manifest = Manifest.model_validate_json((run_dir / MANIFEST).read_text())
        return config, manifest
    except (OSError, ValueError, ValidationError):
        return None, None


def run_status(run_dir: Path, wanted: TrainConfig, manifest: Manifest) -> tuple[RunStatus, str]:
    """What to do with a run directory for these settings and this store manifest, and why."""
    run_dir = Path(run_dir)
    has_metrics = read_metrics(run_dir) is not None
    if not run_dir.is_dir() or not ((run_dir / STATE).exists() or has_metrics):
        return "new", "no completed epoch"
    config, trained_on = _saved(run_dir)
    if config is None or trained_on is None:
        return "stale", f"{CONFIG} or {MANIFEST} unreadable"
    now = wanted.model_dump(mode="json")
    changed = [k for k in sorted(set(now) | set(config)) if k not in _IGNORED and config.get(k) != now.get(k)]
    if changed:
        return "stale", f"trained with other settings ({', '.join(changed[:4])})"
    try:
        check_compatible(trained_on, manifest, str(run_dir), writing=False)
    except ManifestMismatchError:
        return "stale", "trained on features of another store"
    if has_metrics:
        return "finished", "metrics.json present"
    return "resume", "state.pt without metrics"


def move_aside(run_dir: Path) -> Path:
    """Keep a superseded run as `<name>.replaced-<n>` next to it."""
    number = 1
    while (target := run_dir.with_name(f"{run_dir.name}.replaced-{number}")).exists():
        number += 1
    os.replace(run_dir, target)
    return target


def _training_done(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The saved progress when training already ended (all epochs, or stopped early), else None."""
    import torch

    state = torch.load(run_dir / STATE, map_location="cpu", weights_only=False)
    stopped = config.schedule == "plateau" and config.early_stopping and state["stale"] >= config.early_stopping
    return state if state["epoch"] >= config.epochs or stopped else None


def _point_at(run_dir: Path, wanted: TrainConfig) -> None:
    """Let a resumed run follow a moved report folder: its saved store and out paths become the current ones."""
    path = run_dir / CONFIG
    saved = json.loads(path.read_text())
    now = wanted.model_dump(mode="json")
    if saved.get("store") != now["store"] or saved.get("out") != now["out"]:
        saved.update(store=now["store"], out=now["out"])
        path.write_text(json.dumps(saved, indent=2))


def _train(run_dir: Path, wanted: TrainConfig, status: RunStatus) -> tuple[dict[str, Any], bool]:
    """Train (or resume, or take an already ended training as it is); returns the run record and whether it resumed."""
    import numpy as np

    from cellgap.decoder.training.loop import train

    if status == "resume":
        _point_at(run_dir, wanted)
        done = _training_done(run_dir, wanted)
        if done is not None:
            seconds = done["epoch_seconds"]
            return {"epochs_run": done["epoch"], "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
                    "best_value": done["best"], "best_epoch": done["best_epoch"]}, True
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # nothing completed in it
    result = train(wanted.model_copy(update={"resume": status == "resume"}))
    return {"epochs_run": result.epochs_run, "seconds_per_epoch": result.seconds_per_epoch,
            "best_metric": result.best_metric, "best_value": result.best_value, "best_epoch": result.best_epoch,
            "parameters": result.parameters, "gflops_per_tile": result.gflops_per_tile}, status == "resume"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def execute_run(job: RunJob, config: CompareConfig, store: StoreOutcome, report_dir: Path, *,
                device: str | None = None, progress: bool = False) -> RunOutcome:
    """Bring one run to finished: train or resume, predict the store's test split, write metrics.json."""
    from cellgap.decoder.predict import predict_store
    from cellgap.featurestore.datasets import open_label_source
    from cellgap.metrics.evaluate import evaluate_sources

    started = time.perf_counter()
    run_dir = job.run_dir(report_dir)
    wanted = config.train_config(store=store.path, out=run_dir, seed=job.seed, device=device, progress=progress)
    status, reason = run_status(run_dir, wanted, store.manifest)
    if status == "finished":
        return skipped_outcome(job, run_dir, started)
    if status == "stale":
        moved = move_aside(run_dir)
        log.info("%s: %s; moved the old run to %s", job.key, reason, moved.name)
    record, resumed = _train(run_dir, wanted, status)
    magnification = job.store.dataset.magnification or store.manifest.dataset.magnification
    record.update(dataset=job.store.dataset.name, encoder=job.label, layers=job.store.layers, seed=job.seed,
                  store=store.path, magnification=magnification)
    _write_json(run_dir / RUN_RECORD, record)
    predictions = run_dir / PREDICTIONS
    shutil.rmtree(predictions, ignore_errors=True)
    predict_store(run_dir, store.path, "test", predictions, device=wanted.device, batch_size=wanted.batch_size,
                  progress=progress)
    report = evaluate_sources(open_label_source(f"store:{store.path},split=test"),
                              open_label_source(f"folder:{predictions}"), radius=radius_at(magnification))
    _write_json(run_dir / METRICS, report.to_json_dict())  # written last: the run's "finished" marker
    return RunOutcome(job.key, str(run_dir), "resumed" if resumed else "trained", headline(report),
                      record.get("seconds_per_epoch"), time.perf_counter() - started)
