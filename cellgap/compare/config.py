"""The compare YAML: data sets, encoders with layer sets, training, seeds; validated once, errors name the field."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cellgap.compare.errors import CompareError, one_line
from cellgap.core.configfile import read_yaml
from cellgap.decoder.training.config import TrainConfig

# Training fields the comparison sets itself: the store and run dir per job, the seed from `seeds`.
MANAGED_TRAINING = {"store": "set per job", "out": "set per job", "seed": "use the top-level `seeds` list",
                    "resume": "finished runs are skipped and crashed ones resumed on their own",
                    "progress": "use --no-progress"}
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def slug(text: str) -> str:
    """A folder-name-safe form of a label: `Swin2-B (22K)` -> `Swin2-B-22K`, `2,5,8` -> `2-5-8`."""
    return _SAFE.sub("-", text).strip("-.") or "x"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetEntry(_Section):
    """One data set: `spec` FORMAT:PATH as `cellgap extract --dataset` takes it."""

    name: str = Field(min_length=1)
    spec: str
    split_seed: int = 0
    magnification: Literal[20, 40] | None = None  # overrides the data set's; sets the F1_d radius
    tile_size: int = Field(256, ge=32)

    @field_validator("spec")
    @classmethod
    def _spec(cls, value: str) -> str:
        from cellgap.featurestore.datasets import parse_spec
        from cellgap.featurestore.errors import DatasetError

        try:
            parse_spec(value)
        except DatasetError as error:
            raise ValueError(str(error)) from None
        return value


class EncoderEntry(_Section):
    """One encoder: `name` is its label in the table, `encoder` a preset, timm or hf-hub name."""

    name: str = Field(min_length=1)
    encoder: str = Field(min_length=1)
    pretrained: bool = True
    weights: Path | None = None
    seed: int = 0  # seed of random weights (pretrained: false)
    layers: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    batch_size: int = Field(8, ge=1)  # extraction batch
    input_size: int | None = Field(None, ge=32)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        """A string or a list; each item a strategy, `i,j,k`, or a list of block indices."""
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, list):
            return value
        normalised = []
        for item in value:
            if isinstance(item, list):
                item = ",".join(str(int(i)) for i in item)
            normalised.append(str(item).replace(" ", "").lower())
        return normalised


class ExtractSettings(_Section):
    dtype: Literal["float16", "float32", "int8"] = "float16"
    codec: Literal["none", "zstd", "blosc-lz4"] = "none"
    shard_tiles: int = Field(32, ge=1)
    views: Literal["none", "flips", "d4"] = "none"
    device: str = "auto"


class GallerySettings(_Section):
    tiles: int = Field(4, ge=0, le=32)


class CompareConfig(_Section):
    """The whole grid; `training` holds TrainConfig fields (without store, out, seed, resume, progress)."""

    datasets: list[DatasetEntry] = Field(min_length=1)
    encoders: list[EncoderEntry] = Field(min_length=1)
    training: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    extract: ExtractSettings = ExtractSettings()
    gallery: GallerySettings = GallerySettings()
    store_dirs: list[Path] = Field(default_factory=list)  # more folders searched for compatible stores
    out: Path | None = None  # report folder when --out is not given

    def train_config(self, *, store: str, out: Path, seed: int, device: str | None = None, resume: bool = False,
                     progress: bool = True) -> TrainConfig:
        values = {**self.training, "store": store, "out": out, "seed": seed, "resume": resume, "progress": progress}
        if device is not None:
            values["device"] = device
        return TrainConfig.model_validate(values)


def _where(location: tuple[Any, ...]) -> str:
    """('encoders', 1, 'layers', 0) -> 'encoders[1].layers[0]'."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "config"


def _check_training(config: CompareConfig, source: str) -> None:
    for key, why in MANAGED_TRAINING.items():
        if key in config.training:
            raise CompareError(f"{source}: training.{key}: not allowed here ({why})")
    try:
        trial = config.train_config(store="-", out=Path("-"), seed=0)
    except ValidationError as error:
        first = error.errors()[0]
        raise CompareError(f"{source}: training.{_where(first['loc'])}: {one_line(first['msg'])}") from None
    if trial.augment == "views" and config.extract.views == "none":
        raise CompareError(f"{source}: training.augment: 'views' needs stored views (set extract.views to flips or d4)")


def _check_unique(config: CompareConfig, source: str) -> None:
    for section, labels in (("datasets", [d.name for d in config.datasets]),
                            ("encoders", [e.name for e in config.encoders])):
        seen: dict[str, int] = {}
        for index, label in enumerate(labels):
            key = slug(label).lower()
            if key in seen:
                raise CompareError(f"{source}: {section}[{index}].name: {label!r} repeats {section}[{seen[key]}].name "
                                   f"{labels[seen[key]]!r}; names must be distinct")
            seen[key] = index
    if len(set(config.seeds)) != len(config.seeds):
        raise CompareError(f"{source}: seeds: {config.seeds} repeats a seed")
    for index, encoder in enumerate(config.encoders):
        if len({slug(layers) for layers in encoder.layers}) != len(encoder.layers):
            raise CompareError(f"{source}: encoders[{index}].layers: {encoder.layers} repeats a layer set")


def _check_encoders(config: CompareConfig, source: str) -> None:
    """Names resolve to an encoder; ViT block strategies only on ViTs; index lists are numbers."""
    from cellgap.featurestore.encoders.layers import check_layers_for_family
    from cellgap.featurestore.encoders.registry import resolve_preset
    from cellgap.featurestore.errors import EncoderError

    for index, entry in enumerate(config.encoders):
        try:
            preset = resolve_preset(entry.encoder)
        except EncoderError as error:
            raise CompareError(f"{source}: encoders[{index}].encoder: {one_line(error)}") from None
        if entry.weights is not None and not entry.weights.is_file():
            raise CompareError(f"{source}: encoders[{index}].weights: no such file {str(entry.weights)!r}")
        for position, layers in enumerate(entry.layers):
            where = f"{source}: encoders[{index}].layers[{position}]"
            try:
                check_layers_for_family(layers, preset.family)
            except EncoderError as error:
                raise CompareError(f"{where}: {one_line(error)}") from None


def parse_compare_config(values: Any, source: str = "config") -> CompareConfig:
    """Validate a loaded mapping into a CompareConfig; the first problem becomes a CompareError naming its field."""
    if not isinstance(values, dict):
        raise CompareError(f"{source}: expected a mapping with datasets, encoders, training and seeds")
    try:
        config = CompareConfig.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise CompareError(f"{source}: {_where(first['loc'])}: {one_line(message)}") from None
    _check_unique(config, source)
    _check_training(config, source)
    _check_encoders(config, source)
    return config


def load_compare_config(path: Path) -> CompareConfig:
    """Read and validate the compare YAML."""
    values = read_yaml(path, "compare config", CompareError)
    return parse_compare_config(values, str(path))
