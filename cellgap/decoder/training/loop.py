"""The training loop: decoder on stored features, CISCA losses, validation with post-processing, checkpoints.

Everything a run needs to continue after an interruption is written at the end of every epoch as
one file, the training state (weights, optimiser, schedule, best score, the epoch's log record), so
no kill can leave its parts from different epochs; `--resume` picks up from there and replays the
same batch order, so a resumed run follows the uninterrupted one. A run killed before its first
epoch finished has nothing to resume and starts afresh.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from timm.utils import ModelEmaV3

from cellgap.core.atomic import PARTIAL_SUFFIX, write_atomically
from cellgap.core.progress import progress_bar
from cellgap.decoder.checkpoint import BEST, LAST, STATE, all_finite, load_checkpoint, save_checkpoint
from cellgap.decoder.errors import TrainingError
from cellgap.decoder.inference import postprocess_preset
from cellgap.decoder.loader import StoreBatches
from cellgap.decoder.losses import CiscaLoss
from cellgap.decoder.networks import (
    CellDecoder,
    DecoderConfig,
    count_parameters,
    flops_per_tile,
    network_spec,
    on_device,
)
from cellgap.decoder.postprocess import PostprocessConfig
from cellgap.decoder.targets_cache import TargetCache, target_config_for
from cellgap.decoder.training.config import TrainConfig
from cellgap.decoder.training.curves import append_log, draw_curves, read_log, truncate_log
from cellgap.decoder.training.tuning import tune_postprocess, tuning_subset
from cellgap.decoder.training.validation import evaluate_split, headline, predicted_maps, score_of
from cellgap.featurestore.encoders.encoder import pick_device
from cellgap.featurestore.store.reader import FeatureStore, open_store

log = logging.getLogger(__name__)
_RESUMABLE_CHANGES = {"resume", "progress", "device", "loader_threads", "out"}  # a moved run folder resumes
# What a run writes into its folder before its first training state: removed when such a run starts afresh.
_BEFORE_FIRST_STATE = ("config.json", "manifest.json", BEST, LAST, "validation.json", "metrics.jsonl", "metrics.csv",
                       "curves.png")


class _Progress(TypedDict):
    """Where a run stands after an epoch; saved in its state file for --resume."""

    epoch: int
    best: float | None
    best_epoch: int | None
    stale: int
    epoch_seconds: list[float]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_metric: str
    best_value: float | None
    best_epoch: int | None
    epochs_run: int
    seconds_per_epoch: float
    parameters: int
    gflops_per_tile: float


def _prepare_run_dir(config: TrainConfig) -> bool:
    """Whether the run resumes; a run folder whose run never finished an epoch is emptied for a fresh start."""
    out = config.out
    if _unfinished_first_epoch(out):
        log.warning("%s: its run stopped before finishing a first epoch; starting it afresh", out)
        for name in _BEFORE_FIRST_STATE:
            (out / name).unlink(missing_ok=True)
        for partial in out.glob(f".*{PARTIAL_SUFFIX}"):
            partial.unlink()
    existing = out.exists() and any(out.iterdir())
    if config.resume and not existing:
        log.warning("%s: nothing to resume; starting a new run", out)
    elif config.resume:
        if not (out / STATE).exists():
            raise TrainingError(f"{out}: nothing to resume (no {STATE}) and the folder holds files that are not a "
                                "run's; choose another --out")
        saved = json.loads((out / "config.json").read_text())
        now = config.model_dump(mode="json")
        changed = [k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]]
        if changed:
            raise TrainingError(f"{out}: --resume needs the same settings; changed: {', '.join(changed)}")
    elif existing:
        raise TrainingError(f"{out}: run directory exists and is not empty; use --resume to continue it or another --out")
    out.mkdir(parents=True, exist_ok=True)
    return config.resume and existing


def _unfinished_first_epoch(out: Path) -> bool:
    """A folder holding only what a run writes before its first training state (and that run's config)."""
    if not (out / "config.json").is_file() or (out / STATE).exists():
        return False
    return all(p.name in _BEFORE_FIRST_STATE or p.name.endswith(PARTIAL_SUFFIX) for p in out.iterdir())


def _indices(store: FeatureStore, split: str, what: str) -> np.ndarray:
    indices = store.indices(split)
    if len(indices) == 0:
        raise TrainingError(f"{store.location}: no completed tiles in split {split!r} for {what} "
                            f"(splits: {store.split_counts()}); choose another --{what}-split")
    return indices


def _optimiser(config: TrainConfig, model: CellDecoder, steps_per_epoch: int):
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if config.optimizer == "adamw":
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:  # CISCA: Adam with AMSGrad
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, amsgrad=True, weight_decay=config.weight_decay)
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle" and total < 8:
        log.info("only %d steps: too few for a one-cycle schedule, training at a constant lr %g", total, config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    elif config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total, pct_start=0.25)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode="max", factor=0.5, patience=10)
    return optimiser, scheduler


def _save_state(out: Path, model: CellDecoder, optimiser, scheduler, progress: _Progress, ema: ModelEmaV3 | None,
                record: dict[str, Any]) -> None:
    """The one file --resume reads: weights, optimiser and schedule of the same epoch, written atomically."""
    extra = {"ema": ema.state_dict()} if ema is not None else {}
    buffer = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimiser.state_dict(), "scheduler": scheduler.state_dict(), "record": record,
                **progress, **extra}, buffer)
    write_atomically(out / STATE, [buffer.getbuffer()], durable=True)


def _resume_weights(out: Path, state: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The weights of the state's epoch. States written before they held the weights pair with last.safetensors,
    which must be of the same epoch: a kill between the two writes would otherwise repeat an epoch unseen."""
    last_epoch = load_checkpoint(out / LAST, device).info.get("epoch") if (out / LAST).is_file() else None
    if "model" in state:
        if last_epoch != state["epoch"]:
            log.warning("%s: %s is from epoch %s, the training state from epoch %d (stopped between the two writes); "
                        "resuming from the state", out, LAST, last_epoch, state["epoch"])
        return state["model"]
    if last_epoch != state["epoch"]:
        raise TrainingError(f"{out}: {LAST} is from epoch {last_epoch} but {STATE} from epoch {state['epoch']}; "
                            "they cannot be resumed together: start the run again in a new --out")
    return load_checkpoint(out / LAST, device).model.state_dict()


def _duration(seconds: float) -> str:
    """A log-friendly duration: 45s, 3m, 1h20m."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _tune_kept_model(config: TrainConfig, store: FeatureStore, valid_idx: np.ndarray, base: PostprocessConfig,
                     metric: str, device: torch.device) -> None:
    """Choose the kept model's post-processing on the valid split and store it in its checkpoint."""
    kept = load_checkpoint(config.out / BEST, device)
    batches = StoreBatches(store, kept.layer_names, tuning_subset(valid_idx), config.batch_size, device=device,
                           threads=config.loader_threads)
    tiles = list(predicted_maps(kept.model, batches))
    result = tune_postprocess(tiles, store, base, metric, kept.spec.n_classes)
    record = {"metric": metric, "tiles": len(tiles), "before": result.before, "after": result.after,
              "chosen": result.config.model_dump(mode="json"), "trials": result.trials}
    save_checkpoint(config.out / BEST, kept.model, kept.manifest, result.config, kept.class_names,
                    {**kept.info, "postprocess_tuning": {k: record[k] for k in ("metric", "tiles", "before", "after")}})
    (config.out / "postprocess.json").write_text(json.dumps(record, indent=2))


def training_batches(store: FeatureStore, layer_names: list[str], indices: np.ndarray, targets: TargetCache,
                     config: TrainConfig, device: torch.device) -> StoreBatches:
    """The training epochs' batches: shuffled, augmented and read as `train` reads them (`bench train` too)."""
    return StoreBatches(store, layer_names, indices, config.batch_size, targets=targets, shuffle=True,
                        augment=config.augment, seed=config.seed, device=device,
                        background_weight=targets.config.regression_background_weight,
                        threads=config.loader_threads, stain_jitter=config.stain_jitter)


def train(config: TrainConfig) -> TrainResult:
    """Train a decoder on the store's train split, validating on its valid split."""
    resuming = _prepare_run_dir(config)
    device = pick_device(config.device)
    store = open_store(config.store)
    if not store.manifest.dataset.has_labels:
        raise TrainingError(f"{config.store}: the store has no labels to train on")
    train_idx = _indices(store, config.train_split, "train")
    valid_idx = _indices(store, config.valid_split, "valid")
    class_names = store.class_names
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        spec = network_spec(store.layers, store.manifest.encoder.family, store.manifest.dataset.tile_size,
                            len(class_names), DecoderConfig.sized(config.decoder))
        model = on_device(CellDecoder(spec), device)
    layer_names = [plan.name for plan in spec.layers]
    targets = TargetCache(store, target_config_for(store))
    targets.ensure(train_idx, progress=config.progress)  # validation scores against the labels themselves
    train_batches = training_batches(store, layer_names, train_idx, targets, config, device)
    valid_batches = StoreBatches(store, layer_names, valid_idx, config.batch_size, device=device,
                                 threads=config.loader_threads)
    criterion = CiscaLoss(config.loss, with_classes=spec.n_classes > 0).to(device)
    optimiser, scheduler = _optimiser(config, model, len(train_batches))
    post = postprocess_preset(store.manifest.dataset.format, store.magnification, config.postprocess)
    metric = config.best_metric if config.best_metric != "auto" else ("mpq_plus" if spec.n_classes > 0 else "pq")
    by_name = {layer.name: layer for layer in store.layers}
    feature_shapes: list[tuple[int, ...]] = [(plan.channels, by_name[plan.name].height, by_name[plan.name].width) for plan in spec.layers]
    parameters, gflops = count_parameters(model), flops_per_tile(model, feature_shapes) / 1e9
    progress: _Progress = {"epoch": 0, "best": None, "best_epoch": None, "stale": 0, "epoch_seconds": []}
    # One good batch late in an epoch is not the model: validate and keep a moving average of the weights.
    ema = ModelEmaV3(model, decay=config.ema, use_warmup=True) if config.ema > 0 else None
    evaluated = ema.module if ema is not None else model
    out = config.out
    if resuming:
        state = torch.load(out / STATE, map_location="cpu", weights_only=False)
        model.load_state_dict(_resume_weights(out, state, device))
        optimiser.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        progress = cast(_Progress, {k: state[k] for k in progress})
        truncate_log(out, progress["epoch"])
        if "record" in state and len(read_log(out)) < progress["epoch"]:  # stopped before the log line was added
            append_log(out, state["record"])
        log.info("resuming %s after epoch %d", out, progress["epoch"])
    else:
        (out / "config.json").write_text(config.model_dump_json(indent=2))
        (out / "manifest.json").write_text(store.manifest.model_dump_json(indent=2))
    log.info("decoder: %.2fM parameters, %.2f GFLOP per tile; encoder %s; %s, torch %d threads", parameters / 1e6,
             gflops, store.manifest.encoder.name, device, torch.get_num_threads())
    for epoch in range(progress["epoch"], config.epochs):
        started = time.perf_counter()
        sums: dict[str, float] = {}
        model.train()
        with progress_bar(len(train_batches), f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                          enabled=config.progress) as bar:
            for step, batch in enumerate(train_batches.epoch(epoch)):
                outputs = model(batch.features, batch.image)
                loss, parts = criterion(outputs, batch.sm1, batch.ddm, batch.classes, batch.weight)
                if not torch.isfinite(loss):  # stop before a poisoned step reaches any checkpoint
                    raise TrainingError(f"epoch {epoch + 1}, batch {step + 1}: the loss is not finite "
                                        f"({float(loss.detach())}; tiles {batch.indices.tolist()}, parts "
                                        f"{ {k: round(v, 4) for k, v in parts.items()} }); check those tiles and --lr")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if config.schedule == "onecycle":
                    scheduler.step()
                if ema is not None:
                    ema.update(model, step=epoch * len(train_batches) + step + 1)
                for key, value in {"loss": float(loss.detach()), **parts}.items():
                    sums[key] = sums.get(key, 0.0) + value * len(batch.indices)
                bar.update(1)
                bar.set_postfix_str(f"loss {float(loss.detach()):.3f}")
        if not all_finite(model):
            raise TrainingError(f"epoch {epoch + 1}: the weights became non-finite in its last step "
                                f"(tiles {batch.indices.tolist()}); nothing of this epoch was saved; check --lr")
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimiser.param_groups[0]["lr"],
                                  "train": {k: v / len(train_idx) for k, v in sums.items()}}
        seconds = time.perf_counter() - started
        last_epoch = epoch + 1 == config.epochs
        if (epoch + 1) % config.val_every == 0 or last_epoch:
            report = evaluate_split(evaluated, valid_batches, store, post)
            values = headline(report)
            record["valid"] = values
            score = score_of(values, metric)
            if config.schedule == "plateau":
                scheduler.step(score)
            if progress["best"] is None or score > progress["best"]:
                progress.update({"best": score, "best_epoch": epoch + 1, "stale": 0})
                save_checkpoint(out / BEST, evaluated, store.manifest, post, class_names,
                                {"epoch": epoch + 1, "metric": metric, "valid": values, "train": record["train"],
                                 "magnification": {"value": store.magnification,
                                                   "assumed": store.magnification_assumed},
                                 "config": config.model_dump(mode="json"), "parameters": parameters,
                                 "gflops_per_tile": gflops})
                (out / "validation.json").write_text(json.dumps(
                    {"epoch": epoch + 1, "metric": metric, **report.to_json_dict()}, indent=2))
            else:
                progress["stale"] += 1
        progress["epoch"] = epoch + 1
        progress["epoch_seconds"] = [*progress["epoch_seconds"], seconds]
        record["seconds"] = seconds
        _save_state(out, model, optimiser, scheduler, progress, ema, record)  # the commit point of the epoch
        save_checkpoint(out / LAST, model, store.manifest, post, class_names, {"epoch": epoch + 1})
        append_log(out, record)
        draw_curves(out)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.get("valid", {}).items()}
        remaining = (config.epochs - epoch - 1) * float(np.mean(progress["epoch_seconds"]))
        log.info("epoch %d/%d: loss %.4f %s (%.1f s, eta %s)", epoch + 1, config.epochs, record["train"]["loss"],
                 shown or "", seconds, _duration(remaining))
        if config.schedule == "plateau" and config.early_stopping and progress["stale"] >= config.early_stopping:
            log.info("early stopping: no improvement of %s for %d validations", metric, progress["stale"])
            break
    if config.tune_postprocess and progress["best_epoch"] is not None:
        _tune_kept_model(config, store, valid_idx, post, metric, device)
    best = progress["best"]
    return TrainResult(out, metric, None if best in (None, float("-inf")) else best, progress["best_epoch"],
                       progress["epoch"], float(np.mean(progress["epoch_seconds"])) if progress["epoch_seconds"] else 0.0,
                       parameters, gflops)
