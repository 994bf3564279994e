"""A frozen timm encoder that turns uint8 tiles into the feature maps of chosen layers.

Thin over timm: `create_model`, `forward_intermediates`, `prune_intermediate_layers`,
`feature_info` and the model's own pretrained config for mean/std. Everything that decides the
features (weights, resize, layers) is described in `EncoderDescription` for the store's manifest.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
import torch.nn.functional as F

from cellgap.featurestore.encoders.description import EncoderDescription, EncoderSettings, LayerInfo
from cellgap.featurestore.encoders.hub import offline_unless_reachable
from cellgap.featurestore.encoders.layers import select_layers
from cellgap.featurestore.encoders.precision import autocast, resolve_precision
from cellgap.featurestore.encoders.registry import EncoderPreset, is_fixed_size_vit, resolve_preset, takes_dynamic_size
from cellgap.featurestore.encoders.weights import (
    load_state,
    package_weights_path,
    read_checkpoint,
    remap_by_order,
    state_sha256,
)
from cellgap.featurestore.errors import EncoderError

log = logging.getLogger(__name__)


def _timm_api(model: torch.nn.Module) -> Any:
    """A timm model with its own API in view (feature_info, patch_embed, forward_intermediates, ...), which
    nn.Module's type does not know: it types every attribute it does not define as `Tensor | Module`."""
    return model


def _resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn dotted class names in preset kwargs into the classes themselves."""
    resolved = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value.count(".") >= 1 and value.split(".")[0] in ("timm", "torch"):
            module_name, _, attribute = value.rpartition(".")
            value = getattr(importlib.import_module(module_name), attribute)
        resolved[key] = value
    return resolved


def _build_kwargs(preset: EncoderPreset, image_size: int) -> dict[str, Any]:
    """Preset kwargs plus what the input size demands; `image_size` is the side the model is fed."""
    kwargs = _resolve_kwargs(preset.kwargs)
    if takes_dynamic_size(preset):
        kwargs["dynamic_img_size"] = True
    elif preset.architecture.startswith("swin") or is_fixed_size_vit(preset):
        kwargs["img_size"] = image_size  # these assert their input side: build them for it (timm resamples tables)
    return kwargs


def _create(model_id: str, pretrained: bool, kwargs: dict[str, Any], name: str, gated: bool) -> torch.nn.Module:
    import timm

    online = True
    try:
        if not pretrained:
            return timm.create_model(model_id, pretrained=False, **kwargs)
        with offline_unless_reachable() as online:
            return timm.create_model(model_id, pretrained=True, **kwargs)
    except Exception as error:  # network, hub auth and checkpoint errors come in many types
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if not online:
            reason = f"the hub cannot be reached and the weights are not in the local cache ({reason})"
        access = " (gated: request access on the hub and run `huggingface-cli login`)" if gated else ""
        raise EncoderError(
            f"cannot load encoder {name!r} from {model_id!r}{access}: {reason}. Options: make the weights reachable "
            "(network or a filled HF cache), pass --weights PATH to a local .safetensors/.pth file, "
            "or --pretrained false for random weights"
        ) from None


def build_model(settings: EncoderSettings) -> tuple[torch.nn.Module, EncoderPreset, str]:
    """The timm model with its weights loaded, the preset it came from, and where the weights came from."""
    preset = resolve_preset(settings.name)
    kwargs = _build_kwargs(preset, settings.input_size or settings.tile_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        if settings.weights is not None or not settings.pretrained or preset.package:
            if not preset.architecture:
                raise EncoderError(f"encoder {settings.name!r} has no known architecture to build without the hub; "
                                   "use a preset name (see `cellgap encoders`) or a timm architecture")
            model = _create(preset.architecture, False, kwargs, settings.name, preset.gated)
        else:
            model = _create(preset.pretrained_id or preset.architecture, True, kwargs, settings.name, preset.gated)
    if settings.weights is not None:
        load_state(model, read_checkpoint(settings.weights), str(settings.weights))
        source = f"file:{settings.weights.resolve()}"
    elif settings.pretrained and preset.package:
        path = package_weights_path(preset.package)
        load_state(model, remap_by_order(read_checkpoint(path), model, str(path)), str(path))
        source = f"package:{preset.package}"
    elif settings.pretrained:
        source = f"pretrained:{preset.pretrained_id}"
    else:
        source = f"random:seed={settings.seed}"
    return model.eval().requires_grad_(False), preset, source


class FrozenEncoder:
    """Runs tiles (B,H,W,3) uint8 through the frozen model and returns the tapped maps (B,C,h,w)."""

    def __init__(self, settings: EncoderSettings, device: torch.device | str = "cpu") -> None:
        import timm

        self.settings = settings
        model, preset, source = build_model(settings)
        timm_model = _timm_api(model)
        feature_info = (timm_model.feature_info if isinstance(timm_model.feature_info, list)
                        else timm_model.feature_info.get_dicts())
        reductions = {int(f["reduction"]) for f in feature_info}
        single_stride = len(reductions) == 1 and hasattr(model, "patch_embed")
        self.family = "vit" if single_stride else "hierarchical"
        self.indices = select_layers(settings.layers, len(feature_info), single_stride)
        self.input_size, self.resize, position = self._input_policy(model, single_stride)
        weights_sha = state_sha256(model)
        if hasattr(model, "prune_intermediate_layers"):
            timm_model.prune_intermediate_layers(self.indices, prune_head=True)
        self.model = model
        config = timm.data.resolve_model_data_config(model)
        mean = preset.mean or tuple(float(v) for v in config["mean"])
        std = preset.std or tuple(float(v) for v in config["std"])
        self.device = torch.device(device)
        self.precision = resolve_precision(settings.precision, self.device.type)
        self.model.to(self.device)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        shapes = self._probe_shapes()
        prefix = "block" if single_stride else "stage"
        layers = tuple(
            LayerInfo(name=f"{prefix}{index}", index=index, stride=settings.tile_size / shape[-1], channels=shape[1],
                      height=shape[2], width=shape[3])
            for index, shape in zip(self.indices, shapes)
        )
        self.description = EncoderDescription(
            name=settings.name,
            architecture=type(model).__name__ + ":" + (preset.architecture or preset.pretrained_id or settings.name),
            family=self.family,
            weights_source=source,
            weights_sha256=weights_sha,
            input_size=self.input_size,
            resize=self.resize,
            interpolation="bicubic+antialias" if self.resize else "none",
            position_embedding=position,
            mean=mean,
            std=std,
            layers=layers,
            timm_version=timm.__version__,
            torch_version=torch.__version__,
            precision=self.precision,
        )

    def _input_policy(self, model: torch.nn.Module, single_stride: bool) -> tuple[int, bool, str]:
        """Side fed to the model, whether tiles are resized, and how position embeddings cope."""
        tile = self.settings.tile_size
        if not single_stride:
            size = self.settings.input_size or tile
            return size, size != tile, "n/a"
        patch_embed = _timm_api(model).patch_embed
        patch = int(patch_embed.patch_size[0])
        native = getattr(patch_embed, "img_size", None)
        if self.settings.input_size is not None:
            size = self.settings.input_size
        elif tile % patch == 0:
            size = tile
        else:  # e.g. patch 14 on 256 tiles: keep a 16x16 token grid (224 px), as the paper-sized ViTs expect
            size = (tile // 16) * patch
        if size % patch:
            raise EncoderError(f"--input-size {size} is not a multiple of the patch size {patch}")
        if native is not None and tuple(native) != (size, size):
            if not getattr(model, "dynamic_img_size", False):
                raise EncoderError(f"{self.settings.name}: built for {tuple(native)} px inputs, which cannot take "
                                   f"{size} px; pass --input-size {native[0]} (tiles are resized)")
            return size, size != tile, f"interpolated from {tuple(native)} (dynamic_img_size)"
        trained = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")  # (3, H, W) of the checkpoint
        if trained and tuple(trained[1:]) != (size, size):
            return size, size != tile, (f"built for {size} px (timm resamples position tables made for "
                                        f"{tuple(trained[1:])})")
        return size, size != tile, "native"

    def to(self, device: torch.device | str) -> FrozenEncoder:
        """Move the model to another device in place (a store planned on a CPU, extracted on a GPU).

        The precision stays the one described: plan with the settings' precision resolved for the device
        that will extract (`plan_extraction` does), not for the device that planned."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        return self

    @torch.inference_mode()
    def _probe_shapes(self) -> list[tuple[int, ...]]:
        probe = torch.zeros(1, self.settings.tile_size, self.settings.tile_size, 3, dtype=torch.uint8, device=self.device)
        return [tuple(t.shape) for t in self(probe)]

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 (B,H,W,3) -> normalised float (B,3,S,S) at the model's input size."""
        x = tiles.permute(0, 3, 1, 2).float().div_(255.0)
        if self.resize:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0.0, 1.0)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def __call__(self, tiles: torch.Tensor) -> list[torch.Tensor]:
        x = self.preprocess(tiles.to(self.device, non_blocking=True))
        with autocast(self.precision, self.device):
            maps = _timm_api(self.model).forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return [m.float() for m in maps]


def pick_device(requested: str = "auto") -> torch.device:
    """cuda when asked or available under `auto`; asking for cuda without one is an error, not a fallback."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderError(f"--device {requested}: no CUDA device is available (use auto or cpu)")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise EncoderError(f"--device {requested!r}: use auto, cpu, cuda or cuda:N") from None
