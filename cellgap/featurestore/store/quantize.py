"""Feature dtypes: float16 (default), float32, and int8 with per-tile, per-channel symmetric scales."""
from __future__ import annotations

import numpy as np

INT8_LEVELS = 127


def quantize_int8(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,C,h,w) float -> int8 codes and (n,C) float32 scales such that codes * scale ~ features."""
    peak = np.abs(features).max(axis=(2, 3)).astype(np.float32)
    scale = np.where(peak > 0, peak / INT8_LEVELS, np.float32(1.0)).astype(np.float32)
    codes = np.rint(features / scale[:, :, None, None]).clip(-INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return codes, scale


def dequantize_int8(codes: np.ndarray, scale: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Float features from codes; arithmetic in float32 (numpy has no fast float16 math)."""
    values = codes.astype(np.float32)
    values *= scale[:, :, None, None]
    return values.astype(dtype, copy=False)


def encode_features(features: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored values (and int8 scales) for float32 features."""
    if dtype == "int8":
        return quantize_int8(features)
    if dtype == "float16":
        if features.dtype == np.float16:
            return features, None
        finite_max = np.finfo(np.float16).max
        return np.clip(features, -finite_max, finite_max).astype(np.float16), None
    return features.astype(np.float32, copy=False), None
