"""From network outputs to instances: probabilities on the device, post-processing per tile on the CPU."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cellgap.decoder.networks import CellDecoder
from cellgap.decoder.postprocess import Instances, PostprocessConfig, postprocess


@dataclass
class TileMaps:
    """One tile's maps as post-processing takes them: sm1 (3,H,W), ddm (4,H,W), classes (K+1,H,W) or None."""

    sm1: np.ndarray
    ddm: np.ndarray
    classes: np.ndarray | None


@torch.inference_mode()
def forward_probabilities(model: CellDecoder, features: list[torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Softmax SM1 and SM2, linear distance maps (batched, on the model's device)."""
    outputs = model(features, image)
    result = {"sm1": outputs["sm1"].softmax(1), "ddm": outputs["ddm"]}
    if "sm2" in outputs:
        result["sm2"] = outputs["sm2"].softmax(1)
    return result


def split_tiles(probabilities: dict[str, torch.Tensor]) -> list[TileMaps]:
    host = {k: v.float().cpu().numpy() for k, v in probabilities.items()}
    return [TileMaps(host["sm1"][i], host["ddm"][i], host["sm2"][i] if "sm2" in host else None)
            for i in range(host["sm1"].shape[0])]


def instances_of(maps: TileMaps, config: PostprocessConfig) -> Instances:
    return postprocess(maps.sm1, maps.ddm, maps.classes, config)


def postprocess_preset(dataset_format: str, magnification: int | None, choice: str = "auto") -> PostprocessConfig:
    """CISCA's size thresholds for the known data sets, else the magnification's defaults."""
    if choice != "auto":
        return PostprocessConfig.preset(choice)
    if dataset_format in ("pannuke", "conic"):
        return PostprocessConfig.preset(dataset_format)
    if dataset_format == "cytodark0":
        return PostprocessConfig.preset("cytodark0-40x" if magnification == 40 else "cytodark0-20x")
    return PostprocessConfig.preset(None, magnification=20 if magnification == 20 else 40)
