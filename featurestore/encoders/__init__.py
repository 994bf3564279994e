"""Frozen encoders: named presets over timm, weight loading, and multi-scale layer tapping."""
from __future__ import annotations

from featurestore.encoders.encoder import (
    EncoderDescription,
    EncoderSettings,
    FrozenEncoder,
    LayerInfo,
    pick_device,
)
from featurestore.encoders.registry import PRESETS, EncoderPreset, resolve_preset

__all__ = [
    "PRESETS", "EncoderDescription", "EncoderPreset", "EncoderSettings", "FrozenEncoder", "LayerInfo",
    "pick_device", "resolve_preset",
]
