"""What an encoder is, as data: the user's settings and the description stored in every manifest.

Kept free of torch and timm so that reading a store (`cellgap store info`, `evaluate --gt store:`)
never pays for importing them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cellgap.core.limits import MAX_SEED, MAX_TILE_SIDE
from cellgap.featurestore.encoders.precision import PrecisionChoice, RecordedPrecision


class EncoderSettings(BaseModel):
    """What the user asks for; validated once at the edge."""

    model_config = ConfigDict(frozen=True)

    name: str
    pretrained: bool = True
    weights: Path | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    layers: str = "default"
    tile_size: int = Field(256, ge=32, le=MAX_TILE_SIDE)
    input_size: int | None = Field(None, ge=32, le=MAX_TILE_SIDE)
    precision: PrecisionChoice = "auto"  # compute precision; auto: bf16 on CUDA devices that have it, else fp32


class LayerInfo(BaseModel):
    """One tapped layer: its position, stride in tile pixels, channels and grid."""

    model_config = ConfigDict(frozen=True)

    name: str
    index: int
    stride: float
    channels: int
    height: int
    width: int


class EncoderDescription(BaseModel):
    """Everything that determines the features; stored in the manifest and compared on reuse."""

    model_config = ConfigDict(frozen=True)

    name: str
    architecture: str
    family: str  # "hierarchical" or "vit"
    weights_source: str  # pretrained:<id> | package:<name> | file:<path> | random:seed=<n>
    weights_sha256: str
    input_size: int  # side of the square image fed to the model
    resize: bool  # tile resized to input_size before the model
    interpolation: str
    position_embedding: str  # native | interpolated (dynamic_img_size) | n/a
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layers: tuple[LayerInfo, ...]
    timm_version: str
    torch_version: str
    precision: RecordedPrecision = "unknown"  # the forward pass's autocast; "unknown" in manifests older than it

    def identity(self) -> dict[str, Any]:
        """The fields that must agree for two stores or a store and a run to be interchangeable."""
        return self.model_dump(exclude={"timm_version", "torch_version", "weights_source"})
