"""The training job's settings: one typed model, filled from a YAML file and/or flags, validated once."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cellgap.core.configfile import read_yaml
from cellgap.core.limits import MAX_SEED
from cellgap.decoder.errors import DecoderError
from cellgap.decoder.lossweights import LossWeights
from cellgap.decoder.postprocess import PresetName

FLOAT32_MAX = 3.4028234663852886e38


class TrainConfig(BaseModel):
    """Every setting of a training run; the `train` flags are made from these fields and their descriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = Field(description="feature store to train from (from `cellgap extract`)")
    out: Path = Field(description="run folder: checkpoints, metrics.jsonl, curves.png")
    name: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._+-]+$", description=(
        "the model's name in served answers and reports (default: encoder-dataset)"))
    epochs: int = Field(20, ge=1, description="passes over the train split")
    batch_size: int = Field(4, ge=1, description="tiles per optimiser step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay (adamw) or L2 (adam)")
    optimizer: Literal["adamw", "adam"] = Field("adamw", description="optimiser")
    schedule: Literal["onecycle", "plateau"] = Field("onecycle", description=(
        "learning-rate schedule: one cycle over all epochs, or halve on a valid plateau"))
    augment: Literal["none", "d4", "views"] = Field("d4", description=(
        "d4: flips and rotations of the stored features; views: the store's extracted views (--views at extract)"))
    stain_jitter: float = Field(0.0, ge=0, le=0.5, description=(
        "strength of the H&E stain jitter on the image skip (scale 1 +- s, shift +- s/4 per stain); 0 = off"))
    ema: float = Field(0.0, ge=0, lt=1, description=(
        "decay of the moving average of the weights that is validated and saved; 0 = off"))
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the weights, the shuffling and the augmentation")
    resume: bool = Field(False, description="continue an interrupted run in --out")
    decoder: Literal["small", "base"] = Field("small", description="decoder widths (small: CPU-friendly)")
    val_every: int = Field(1, ge=1, description="validate every N epochs")
    best_metric: Literal["auto", "pq", "mpq_plus", "f1_d", "aji", "dice1"] = Field("auto", description=(
        "valid metric that picks the saved best epoch (auto: mPQ+ with cell types, else PQ)"))
    early_stopping: int = Field(20, ge=0, description="epochs without improvement before stopping (plateau schedule)")
    postprocess: Literal["auto"] | PresetName = Field(
        "auto", description="post-processing thresholds: auto (from the data set and its magnification) or a preset")
    tune_postprocess: bool = Field(True, description=(
        "choose the post-processing thresholds on the valid split after training (stored in the run)"))
    loss: LossWeights = LossWeights()
    train_split: str = Field("train", description="split of the store to train on")
    valid_split: str = Field("valid", description="split of the store to validate on")
    loader_threads: int = Field(2, ge=1, description="threads reading and decoding store batches")
    progress: bool = Field(True, description="progress bar (off: one log line per epoch)")

    @field_validator("lr", "weight_decay")
    @classmethod
    def _fits_float32(cls, value: float) -> float:
        """The optimiser keeps these in float32: a larger finite value fails inside torch. (An infinite one is let
        through: the first non-finite loss then stops training, naming the epoch and the batch.)"""
        if math.isfinite(value) and value > FLOAT32_MAX:
            raise ValueError(f"{value:g} is more than the largest float32, {FLOAT32_MAX:.4g}")
        return value


def load_train_config(yaml_path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Fields from the YAML file, then the flags given on the command line; one validation."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        loaded = read_yaml(yaml_path, "training config", DecoderError)
        if not isinstance(loaded, dict):
            raise DecoderError(f"{yaml_path}: expected a mapping of training settings")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        source = f"{yaml_path}: " if yaml_path else ""
        raise DecoderError(f"{source}training setting {where!r}: {first['msg'].removeprefix('Value error, ')}") from None
