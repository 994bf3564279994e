"""The training job's settings: one typed model, filled from a YAML file and/or flags, validated once."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cellgap.decoder.errors import DecoderError
from cellgap.decoder.losses import LossWeights
from cellgap.decoder.postprocess import PresetName


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str
    out: Path
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    schedule: Literal["onecycle", "plateau"] = "onecycle"
    augment: Literal["none", "d4", "views"] = "d4"
    stain_jitter: float = Field(0.0, ge=0, le=0.5, description=(
        "strength of the H&E stain jitter on the image skip (scale 1 +- s, shift +- s/4 per stain); 0 = off"))
    ema: float = Field(0.0, ge=0, lt=1, description=(
        "decay of the moving average of the weights that is validated and saved; 0 = off"))
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    decoder: Literal["small", "base"] = "small"
    val_every: int = Field(1, ge=1)
    best_metric: Literal["auto", "pq", "mpq_plus", "f1_d", "aji", "dice1"] = "auto"
    early_stopping: int = Field(20, ge=0, description="epochs without improvement before stopping (plateau schedule)")
    postprocess: Literal["auto"] | PresetName = Field(
        "auto", description="auto (from the data set) | pannuke | conic | cytodark0-20x | cytodark0-40x")
    tune_postprocess: bool = Field(True, description=(
        "choose the post-processing thresholds on the valid split after training (stored in the run)"))
    loss: LossWeights = LossWeights()
    train_split: str = "train"
    valid_split: str = "valid"
    loader_threads: int = Field(2, ge=1)
    progress: bool = True


def load_train_config(yaml_path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Fields from the YAML file, then the flags given on the command line; one validation."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(yaml_path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise DecoderError(f"{yaml_path}: cannot read config ({error})") from None
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
        raise DecoderError(f"{source}training setting {where!r}: {first['msg']}") from None
