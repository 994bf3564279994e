"""The weights of CISCA's loss terms: plain settings, kept apart from the torch losses so that the
training config (and so the `train` flags every command's parser builds) loads without torch."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LossWeights(BaseModel):
    """Default weights [2, 1, 2, 5, 2, 2] over [CCE, Dice boundary, Dice body, cell type, MAE, MSGE]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cce: float = Field(2.0, ge=0)
    dice_boundary: float = Field(1.0, ge=0)
    dice_body: float = Field(2.0, ge=0)
    celltype: float = Field(5.0, ge=0)
    mae: float = Field(2.0, ge=0)
    msge: float = Field(2.0, ge=0)
    tversky_alpha: float = Field(0.7, gt=0, lt=1)
