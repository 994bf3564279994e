"""Checkpoints: safetensors weights whose metadata carries everything needed to rebuild and check the model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from cellgap.core.atomic import write_atomically
from cellgap.decoder.errors import CheckpointError
from cellgap.decoder.networks import CellDecoder, NetworkSpec, on_device
from cellgap.decoder.postprocess import PostprocessConfig
from cellgap.featurestore.store.manifest import Manifest

KEY = "cellgap"
BEST, LAST, STATE = "model.safetensors", "last.safetensors", "state.pt"  # the files of a run directory


@dataclass
class Checkpoint:
    """A trained decoder with the store manifest it was trained on and its post-processing."""

    model: CellDecoder
    spec: NetworkSpec
    manifest: Manifest
    postprocess: PostprocessConfig
    class_names: tuple[str, ...]
    info: dict[str, Any]  # epoch, metrics, train config

    @property
    def layer_names(self) -> list[str]:
        return [plan.name for plan in self.spec.layers]


def all_finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one host sync)."""
    tensors = [t.detach() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def save_checkpoint(path: Path, model: CellDecoder, manifest: Manifest, postprocess: PostprocessConfig,
                    class_names: tuple[str, ...], info: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so an interruption never leaves half a checkpoint."""
    metadata = {KEY: json.dumps({
        "format": 1, "spec": model.spec.model_dump(mode="json"), "manifest": manifest.model_dump(mode="json"),
        "postprocess": postprocess.model_dump(mode="json"), "class_names": list(class_names), "info": info,
    }, default=str)}
    if not all_finite(model):
        raise CheckpointError(f"{path}: refusing to save weights that are not finite")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomically(path, save_bytes(tensors, metadata), durable=True)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the model from a checkpoint; any damage is a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path), device="cpu")
        content = json.loads(metadata[KEY])
        spec = NetworkSpec.model_validate(content["spec"])
        model = CellDecoder(spec)
        model.load_state_dict(state)
        manifest = Manifest.model_validate(content["manifest"])
        postprocess = PostprocessConfig.model_validate(content["postprocess"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{path}: not a usable cellgap checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:160] if str(error) else ''})") from None
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} weight tensors are not finite (first: {broken[0]}); "
                              f"this checkpoint cannot predict: retrain, or use another")
    return Checkpoint(on_device(model, device).eval(), spec, manifest, postprocess, tuple(content["class_names"]),
                      content.get("info", {}))
