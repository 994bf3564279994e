"""Which layers of an encoder to tap: all stages of hierarchical nets, block strategies for ViTs.

ViT strategies tap four blocks: `shallow` spreads them over the first half of the depth, `deep`
over the second half, `mixed` over the whole depth (UNETR's choice; for 24 blocks: 5, 11, 17, 23).
"""
from __future__ import annotations

import numpy as np

from cellgap.featurestore.errors import EncoderError

VIT_STRATEGIES: tuple[str, ...] = ("shallow", "deep", "mixed")
TAPS_PER_STRATEGY = 4


def vit_block_indices(strategy: str, depth: int) -> list[int]:
    """0-based block indices for a named strategy on a ViT of `depth` blocks."""
    if depth < TAPS_PER_STRATEGY:
        return list(range(depth))
    half = depth // 2
    if strategy == "mixed":
        spots = np.linspace(depth / TAPS_PER_STRATEGY, depth, TAPS_PER_STRATEGY)
    elif strategy == "shallow":
        spots = np.linspace(half / TAPS_PER_STRATEGY, half, TAPS_PER_STRATEGY)
    elif strategy == "deep":
        spots = np.linspace(half + (depth - half) / TAPS_PER_STRATEGY, depth, TAPS_PER_STRATEGY)
    else:
        raise EncoderError(f"unknown ViT layer strategy {strategy!r} (use {', '.join(VIT_STRATEGIES)} or indices)")
    return sorted({int(np.floor(s + 0.5)) - 1 for s in spots})


def select_layers(spec: str, n_levels: int, single_stride: bool) -> list[int]:
    """Level indices to tap for a `--layers` value: default/all, a ViT strategy, or `i,j,k` (negative counts from the end)."""
    text = spec.strip().lower()
    if text in ("", "default"):
        text = "mixed" if single_stride else "all"
    if text == "all":
        return list(range(n_levels))
    if text in VIT_STRATEGIES:
        if not single_stride:
            raise EncoderError(f"layer strategy {text!r} is for ViTs; this encoder has stages at several strides "
                               "(use all or explicit indices)")
        return vit_block_indices(text, n_levels)
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EncoderError(f"--layers {spec!r}: use default, all, {', '.join(VIT_STRATEGIES)} or indices like 2,5,8,11") from None
    resolved = sorted({i + n_levels if i < 0 else i for i in indices})
    if not resolved or resolved[0] < 0 or resolved[-1] >= n_levels:
        raise EncoderError(f"--layers {spec!r}: indices must lie in 0..{n_levels - 1} (or -{n_levels}..-1)")
    return resolved
