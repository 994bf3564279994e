"""The extraction job's settings, validated once at the edge (command line or YAML)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cellgap.featurestore.encoders.description import EncoderSettings


class ExtractConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    dataset: str  # FORMAT:PATH
    store: str  # path or fsspec URL
    encoder: EncoderSettings
    batch_size: int = Field(8, ge=1)
    device: str = "auto"
    replicas: int | None = Field(None, ge=1)  # CPU encoder replicas; None: one single-threaded replica per thread
    dtype: Literal["float16", "float32", "int8"] = "float16"
    codec: Literal["none", "zstd", "blosc-lz4"] = "none"
    shard_tiles: int = Field(32, ge=1)
    views: Literal["none", "flips", "d4"] = "none"
    split_seed: int = 0
    magnification: Literal[20, 40] | None = None  # for data sets that do not know theirs (folder:)
    mpp: float | None = Field(None, gt=0, lt=10)  # microns per pixel, recorded where known
    workers: int | None = Field(None, ge=1)
    scheduler: str | None = None
    progress: bool = True
