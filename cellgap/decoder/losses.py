"""CISCA's losses: SM1 cross-entropy + Dice, masked MAE + gradient loss on the distance maps, SM2 CE + Tversky.

Default weights [2, 1, 2, 5, 2, 2] / 14 over [CCE, Dice boundary, Dice body, cell type, MAE, MSGE];
without a class head [2, 1, 2, 2, 2] / 9. The gradient loss covers the two diagonal maps only, as
the reference does when diagonals are on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cellgap.decoder.kernels import directional_kernels
from cellgap.decoder.lossweights import LossWeights

EPSILON = 1e-6


def dice(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice over the whole batch flattened, smoothing 1."""
    intersection = (probability * target).sum()
    return (2 * intersection + 1) / (probability.sum() + target.sum() + 1)


def masked_mae(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mean(w|y - y^|)/mean(w) + 0.01 mean((1-w)|y^|), w the 1/0.05 near-cell weight."""
    w = weight.unsqueeze(1)
    return (w * (prediction - target).abs()).mean() / w.mean() + 0.01 * ((1 - w) * prediction.abs()).mean()


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                  kernels: torch.Tensor) -> torch.Tensor:
    """Weighted squared difference of the 5x5 directional derivatives of the tl and bl maps."""
    diagonal = kernels[2:4].unsqueeze(1)  # (2,1,5,5)
    pad = diagonal.shape[-1] // 2
    grad_p = F.conv2d(prediction[:, 2:4], diagonal, padding=pad, groups=2)
    grad_t = F.conv2d(target[:, 2:4], diagonal, padding=pad, groups=2)
    w = weight.unsqueeze(1)
    return (w * (grad_p - grad_t) ** 2).mean() / w.mean()


def tversky(probability: torch.Tensor, one_hot: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pixel-wise Tversky over all channels; alpha weighs the ground truth (false negatives)."""
    t = (one_hot * probability + EPSILON) / (alpha * one_hot + (1 - alpha) * probability + EPSILON)
    return (1 - t.clamp(EPSILON, 1 - EPSILON)).mean()


class CiscaLoss(torch.nn.Module):
    """Total loss and its parts from network outputs and targets (sm1 (B,H,W) long, ddm (B,4,H,W),
    classes (B,H,W) long, weight (B,H,W))."""

    def __init__(self, weights: LossWeights, with_classes: bool) -> None:
        super().__init__()
        self.weights, self.with_classes = weights, with_classes
        self.register_buffer("kernels", torch.from_numpy(directional_kernels(5)), persistent=False)
        terms = [weights.cce, weights.dice_boundary, weights.dice_body, weights.mae, weights.msge]
        if with_classes:
            terms.append(weights.celltype)
        self.total_weight = sum(terms)

    def forward(self, outputs: dict[str, torch.Tensor], sm1: torch.Tensor, ddm: torch.Tensor, classes: torch.Tensor,
                weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        probability = outputs["sm1"].softmax(1)
        parts = {
            "cce": F.cross_entropy(outputs["sm1"], sm1),
            "dice_boundary": 1 - dice(probability[:, 0], (sm1 == 0).float()),
            "dice_body": 1 - dice(probability[:, 1], (sm1 == 1).float()),
            "mae": masked_mae(outputs["ddm"], ddm, weight),
            "msge": gradient_loss(outputs["ddm"], ddm, weight, self.get_buffer("kernels")),
        }
        total = (w.cce * parts["cce"] + w.dice_boundary * parts["dice_boundary"] + w.dice_body * parts["dice_body"]
                 + w.mae * parts["mae"] + w.msge * parts["msge"])
        if self.with_classes:
            logits = outputs["sm2"]
            one_hot = F.one_hot(classes, logits.shape[1]).permute(0, 3, 1, 2).float()
            parts["celltype"] = F.cross_entropy(logits, classes) + tversky(logits.softmax(1), one_hot, w.tversky_alpha)
            total = total + w.celltype * parts["celltype"]
        total = total / self.total_weight
        return total, {name: float(value.detach()) for name, value in parts.items()}
