"""Building blocks of the decoder: conv-norm-ReLU, learned upsampling, residual head blocks.

Normalisation is GroupNorm: a decoder trained from a store often takes few, small batches per
epoch, where BatchNorm's running statistics lag behind the weights and make validation erratic.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups of at least 4 channels (LayerNorm-like for narrow layers)."""
    groups = math.gcd(channels, max(1, min(8, channels // 4)))
    return nn.GroupNorm(groups, channels)


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + norm + ReLU, the U-Net level block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
        )


class Projection(nn.Sequential):
    """1x1 conv + norm + ReLU: brings an encoder layer (any width) to the decoder's width at its level."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm(out_channels), nn.ReLU(inplace=True))


class LearnedUpsample(nn.Sequential):
    """UNETR's upsampling of a ViT token grid: `steps` times (2x2 transposed conv, 3x3 conv, norm, ReLU)."""

    def __init__(self, channels: int, steps: int) -> None:
        layers: list[nn.Module] = []
        for _ in range(steps):
            layers += [nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False),
                       nn.Conv2d(channels, channels, 3, padding=1, bias=False), norm(channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """CISCA's head block: conv3x3-ReLU-conv3x3 plus a 1x1 shortcut where the width changes, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Head(nn.Sequential):
    """Two residual blocks of `width` and a 1x1 output conv (activation applied by the caller)."""

    def __init__(self, in_channels: int, width: int, out_channels: int) -> None:
        super().__init__(ResidualBlock(in_channels, width), ResidualBlock(width, width), nn.Conv2d(width, out_channels, 1))
