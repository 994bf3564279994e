"""The decoder network sized from a store's manifest, for a hierarchical and a ViT encoder."""
from __future__ import annotations

import numpy as np
import torch

from cellgap.decoder.losses import CiscaLoss
from cellgap.decoder.lossweights import LossWeights
from cellgap.decoder.networks import CellDecoder, DecoderConfig, count_parameters, flops_per_tile, network_spec
from cellgap.featurestore.store import open_store


def _model_and_inputs(store_path, n_classes=3, batch=2):
    store = open_store(str(store_path))
    spec = network_spec(store.layers, store.manifest.encoder.family, 256, n_classes)
    indices = np.arange(batch)
    features = [torch.from_numpy(store.read_features(indices, plan.name)) for plan in spec.layers]
    image = torch.from_numpy(store.read_images(indices)).permute(0, 3, 1, 2).float() / 255
    return CellDecoder(spec), spec, features, image, store


def test_hierarchical_store_gives_full_resolution_heads(conv_store):
    model, spec, features, image, store = _model_and_inputs(conv_store)
    assert [p.target_stride for p in spec.layers] == [4, 8, 16, 32] and spec.levels == [32, 16, 8, 4, 2, 1]
    out = model(features, image)
    assert out["sm1"].shape == (2, 3, 256, 256) and out["ddm"].shape == (2, 4, 256, 256)
    assert out["sm2"].shape == (2, 4, 256, 256)


def test_vit_store_is_upsampled_unetr_style(vit_store):
    model, spec, features, image, _ = _model_and_inputs(vit_store)
    assert [(p.name, p.target_stride, p.upsample_steps) for p in spec.layers] == [
        ("block2", 2, 3), ("block5", 4, 2), ("block8", 8, 1), ("block11", 16, 0)]
    out = model(features, image)
    assert out["sm1"].shape == (2, 3, 256, 256) and out["sm2"].shape == (2, 4, 256, 256)


def test_class_head_is_optional(conv_store):
    model, _, features, image, _ = _model_and_inputs(conv_store, n_classes=0)
    assert "sm2" not in model(features, image)


def test_decoder_is_small_next_to_the_encoders_it_serves(conv_store):
    model, spec, _, _, store = _model_and_inputs(conv_store)
    shapes = [(layer.channels, layer.height, layer.width) for layer in store.layers]
    parameters, flops = count_parameters(model), flops_per_tile(model, shapes)
    assert parameters < 3e6 and 1e9 < flops < 5e9  # ConvNeXt-B alone: 88M parameters, ~20 GFLOP at 256 px
    base = CellDecoder(network_spec(store.layers, "hierarchical", 256, 3, DecoderConfig.sized("base")))
    assert count_parameters(base) > parameters


def test_one_training_step_reduces_the_loss(conv_store):
    from cellgap.decoder.targets_cache import TargetCache, target_config_for

    model, spec, features, image, store = _model_and_inputs(conv_store, batch=4)
    cache = TargetCache(store, target_config_for(store))
    cache.ensure(np.arange(4), progress=False)
    t = cache.read(np.arange(4))
    sm1, ddm = torch.from_numpy(t.sm1).long(), torch.from_numpy(t.ddm)
    classes, weight = torch.from_numpy(t.classes).long(), torch.from_numpy(np.where(t.near, 1.0, 0.05)).float()
    criterion = CiscaLoss(LossWeights(), with_classes=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    model.train()
    losses = []
    for _ in range(4):
        loss, parts = criterion(model(features, image), sm1, ddm, classes, weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert set(parts) == {"cce", "dice_boundary", "dice_body", "mae", "msge", "celltype"}
    assert losses[-1] < losses[0]
