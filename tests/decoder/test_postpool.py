"""The post-processing pool gives exactly the single-process instances, in order, and leaves no process behind."""
from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from cellgap.decoder.inference import TileMaps, instances_of
from cellgap.decoder.postpool import PostprocessPool, default_workers
from cellgap.decoder.postprocess import PostprocessConfig


def synthetic_maps(seed: int, size: int = 96) -> TileMaps:
    """The ideal maps of a synthetic tile's nuclei (as a perfect decoder would give), a little noise added."""
    from cellgap.decoder.targets import TargetConfig, compute_targets, one_hot
    from cellgap.featurestore.datasets.synthetic import make_tile

    tile = make_tile(seed, size=size, n_classes=3)
    targets = compute_targets(tile.instances, tile.classes, TargetConfig(magnification=40))
    noise = np.random.default_rng(seed).uniform(0, 0.05, (3, size, size)).astype(np.float32)
    sm1 = one_hot(targets.sm1, 3).astype(np.float32) + noise
    return TileMaps(sm1 / sm1.sum(0), targets.ddm.astype(np.float32), one_hot(targets.classes, 4).astype(np.float32))


def test_the_pool_gives_the_in_process_instances_in_order():
    config = PostprocessConfig.preset(None, magnification=40)
    tiles = [synthetic_maps(seed) for seed in range(6)]
    expected = [instances_of(maps, config) for maps in tiles]
    assert sum(int(e.labels.max()) for e in expected) > 0  # the maps hold nuclei
    with PostprocessPool(config, workers=2) as pool:
        found = list(pool.map(tiles))
    for a, b in zip(expected, found, strict=True):
        for field in ("labels", "classes", "scores", "confidences"):
            assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not multiprocessing.active_children()


def test_an_error_inside_the_block_shuts_the_workers_down():
    config = PostprocessConfig.preset(None, magnification=40)
    with pytest.raises(RuntimeError, match="stop"), PostprocessPool(config, workers=2) as pool:
        pool.submit(synthetic_maps(0)).result()
        assert multiprocessing.active_children()
        raise RuntimeError("stop")
    assert not multiprocessing.active_children()


def test_zero_or_one_worker_is_in_process_and_the_default_fits_the_machine():
    config = PostprocessConfig.preset(None, magnification=40)
    with PostprocessPool(config, workers=1) as pool:
        assert pool.submit(synthetic_maps(1)).done() and not multiprocessing.active_children()
    assert 0 <= default_workers() <= 8
    with pytest.raises(ValueError, match=">= 0"):
        PostprocessPool(config, workers=-1)
