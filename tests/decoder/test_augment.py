"""D4 views of targets: transforming the label map and recomputing equals transforming the targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cellgap.core.views import ALL_VIEWS, apply_view
from cellgap.decoder.augment import ddm_view_mapping, view_ddm
from cellgap.decoder.targets import TargetConfig, compute_targets
from cellgap.featurestore.datasets.synthetic import make_tile


@pytest.mark.parametrize("view", ALL_VIEWS)
def test_viewed_targets_equal_targets_of_the_viewed_tile(view):
    tile = make_tile(5)
    config = TargetConfig(magnification=20)
    base = compute_targets(tile.instances, tile.classes, config)
    viewed = compute_targets(np.ascontiguousarray(apply_view(tile.instances, view)),
                             np.ascontiguousarray(apply_view(tile.classes, view)), config)
    assert np.array_equal(viewed.sm1, apply_view(base.sm1, view))
    assert np.array_equal(viewed.weight, apply_view(base.weight, view))
    np.testing.assert_array_equal(view_ddm(torch.from_numpy(base.ddm), view).numpy(), viewed.ddm)


def test_quarter_turn_swaps_horizontal_and_vertical():
    sources, signs = ddm_view_mapping("rot90")
    assert sources[:2] == [1, 0] and signs[:2] == [1.0, -1.0]
    assert ddm_view_mapping("identity") == ([0, 1, 2, 3], [1.0] * 4)
