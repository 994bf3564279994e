"""The decoder's shape, derived from a store's manifest: which layer feeds which level at which stride."""
from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from cellgap.featurestore.encoders.description import LayerInfo


class DecoderConfig(BaseModel):
    """Widths of the decoder; the rest of its shape comes from the store.

    The full-resolution part (stem, last level, heads) dominates the cost, so the default is narrow
    enough to train on a CPU in minutes (about 3 GFLOP per 256 tile); `DecoderConfig.sized("base")`
    is closer to CISCA's widths for GPU training.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_width: int = Field(8, ge=4, description="channels at stride 1; doubles per level up to max_width")
    max_width: int = Field(256, ge=8)
    stem_width: int = Field(8, ge=4, description="full-resolution image stem (the image skip)")
    head_features: int = Field(16, ge=8, description="shared 3x3 feature conv before the heads (CISCA: 256)")
    head_width: int = Field(8, ge=4, description="residual width of the SM1 and class heads (CISCA: 32)")
    ddm_head_width: int = Field(8, ge=1, description="residual width of the distance-map head (CISCA: 4 on 256 features)")

    @classmethod
    def sized(cls, size: str) -> DecoderConfig:
        if size == "small":
            return cls()
        if size == "base":
            return cls(base_width=32, stem_width=32, head_features=64, head_width=32, ddm_head_width=4)
        raise ValueError(f"unknown decoder size {size!r} (use small or base)")


class LayerPlan(BaseModel):
    """One tapped layer: its channels, native stride and the stride it is brought to."""

    model_config = ConfigDict(frozen=True)

    name: str
    channels: int
    stride: float
    target_stride: int
    upsample_steps: int


class NetworkSpec(BaseModel):
    """Everything needed to rebuild the network (stored in the checkpoint)."""

    model_config = ConfigDict(frozen=True)

    tile_size: int
    layers: tuple[LayerPlan, ...]
    n_classes: int  # K; 0 = no class head
    config: DecoderConfig

    @property
    def levels(self) -> list[int]:
        """Decoder levels as strides, coarse to fine, down to 1 (the image stem)."""
        top = max(plan.target_stride for plan in self.layers)
        return [2**k for k in range(int(math.log2(top)), -1, -1)]

    def width(self, stride: int) -> int:
        return min(self.config.max_width, self.config.base_width * stride)


def _power_of_two_at_most(value: float) -> int:
    return 2 ** max(0, int(math.floor(math.log2(max(value, 1.0)) + 1e-9)))


def plan_layers(layers: Sequence[LayerInfo], family: str) -> tuple[LayerPlan, ...]:
    """Hierarchical stages stay at their strides; ViT blocks (one stride) go to 16/8/4/2 by learned upsampling.

    For ViTs the deepest tapped block stays at the token stride and each shallower block is brought
    one level finer, as UNETR does (for 4 taps of a /16 ViT: strides 2, 4, 8, 16).
    """
    plans = []
    if family == "vit":
        ordered = sorted(layers, key=lambda layer: layer.index, reverse=True)
        for depth_rank, layer in enumerate(ordered):
            native = _power_of_two_at_most(layer.stride)
            target = max(2, native // 2**depth_rank)
            steps = int(math.log2(native // target))
            plans.append(LayerPlan(name=layer.name, channels=layer.channels, stride=layer.stride, target_stride=target,
                                   upsample_steps=steps))
        plans.sort(key=lambda p: p.target_stride)
    else:
        for layer in layers:
            target = _power_of_two_at_most(layer.stride)
            plans.append(LayerPlan(name=layer.name, channels=layer.channels, stride=layer.stride, target_stride=target,
                                   upsample_steps=0))
    return tuple(plans)


def network_spec(layers: Sequence[LayerInfo], family: str, tile_size: int, n_classes: int,
                 config: DecoderConfig | None = None) -> NetworkSpec:
    return NetworkSpec(tile_size=tile_size, layers=plan_layers(layers, family), n_classes=n_classes,
                       config=config or DecoderConfig())
