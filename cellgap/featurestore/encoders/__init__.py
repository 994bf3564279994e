"""Frozen encoders: named presets over timm, weight loading, and multi-scale layer tapping."""
from __future__ import annotations

from typing import Any

from cellgap.featurestore.encoders.description import EncoderDescription, EncoderSettings, LayerInfo
from cellgap.featurestore.encoders.registry import PRESETS, EncoderPreset, resolve_preset

__all__ = [
    "PRESETS", "EncoderDescription", "EncoderPreset", "EncoderSettings", "FrozenEncoder", "LayerInfo",
    "pick_device", "resolve_preset",
]

_TORCH_NAMES = {"FrozenEncoder", "pick_device"}


def __getattr__(name: str) -> Any:
    """`FrozenEncoder` and `pick_device` import torch and timm: only when asked for."""
    if name in _TORCH_NAMES:
        from cellgap.featurestore.encoders import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
