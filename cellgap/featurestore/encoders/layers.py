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


def parse_layer_spec(spec: str) -> str | list[int]:
    """A `--layers` value checked for its form alone, before any encoder is built: `all`, a ViT strategy
    or block indices (`default` resolves to `all` or `mixed` once the encoder is known)."""
    text = spec.strip().lower()
    if text in ("", "default", "all", *VIT_STRATEGIES):
        return text or "default"
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        indices = []
    if not indices:
        raise EncoderError(f"layers {spec!r}: use default, all, {', '.join(VIT_STRATEGIES)} "
                           "or indices like 2,5,8,11")
    return indices


def check_layers_for_family(spec: str, family: str) -> None:
    """Refuse a ViT block strategy for a hierarchical encoder from its preset alone, before it is built."""
    parsed = parse_layer_spec(spec)
    if isinstance(parsed, str) and parsed in VIT_STRATEGIES and family != "vit":
        raise EncoderError(f"layer strategy {parsed!r} is for ViTs; this encoder has stages at several strides "
                           "(use default, all or stage indices)")


def select_layers(spec: str, n_levels: int, single_stride: bool) -> list[int]:
    """Level indices to tap for a `--layers` value: default/all, a ViT strategy, or `i,j,k` (negative counts from the end)."""
    parsed = parse_layer_spec(spec)
    if parsed == "default":
        parsed = "mixed" if single_stride else "all"
    if parsed == "all":
        return list(range(n_levels))
    if isinstance(parsed, str):
        if not single_stride:
            raise EncoderError(f"layer strategy {parsed!r} is for ViTs; this encoder has stages at several strides "
                               "(use all or explicit indices)")
        return vit_block_indices(parsed, n_levels)
    resolved = sorted({i + n_levels if i < 0 else i for i in parsed})
    if resolved[0] < 0 or resolved[-1] >= n_levels:
        raise EncoderError(f"--layers {spec!r}: indices must lie in 0..{n_levels - 1} (or -{n_levels}..-1)")
    return resolved
