"""int8 quantisation in torch, where the encoder runs (its threads or its GPU), bit for bit as the store's numpy code."""
from __future__ import annotations

import torch

from cellgap.featurestore.store.quantize import INT8_LEVELS


def quantize_int8_into(values: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
    """`quantize_int8` in torch, bit for bit, written into `codes` (n,C,h,w) int8 and `scales` (n,C) float32:
    it runs where the encoder ran (its threads or its GPU) instead of in a writer thread."""
    values = values.float()
    peak = values.abs().amax(dim=(2, 3))
    scale = torch.where(peak > 0, peak / INT8_LEVELS, torch.ones_like(peak))
    quotient = values / scale[:, :, None, None]
    codes.copy_(quotient.round_().clamp_(-INT8_LEVELS, INT8_LEVELS))  # integral floats: the cast is exact
    scales.copy_(scale)
