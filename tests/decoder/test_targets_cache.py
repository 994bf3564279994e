"""The targets cache inside a store: tiles not extracted yet are not cached as final."""
from __future__ import annotations

import shutil

import numpy as np
import zarr

from cellgap.decoder.targets_cache import TargetCache, encode_targets, target_config_for
from cellgap.featurestore.store import open_store


def test_tiles_extracted_after_the_cache_was_filled_get_their_targets(tmp_path, conv_store):
    path = tmp_path / "store.zarr"
    shutil.copytree(conv_store, path)
    zarr.open_group(str(path), mode="r+")["done"][2] = 0  # as if extraction had stopped before tile 2

    partial = open_store(str(path))
    TargetCache(partial, target_config_for(partial)).ensure(np.arange(4), progress=False)
    zarr.open_group(str(path), mode="r+")["done"][2] = 1  # the resumed extraction completes it

    store = open_store(str(path))
    cache = TargetCache(store, target_config_for(store))
    cache.ensure(np.arange(4), progress=False)
    instances, classes = store.read_labels(np.array([2]))
    expected = encode_targets(instances[0], classes[0], cache.config)
    assert instances[0].max() > 0 and cache.read(np.array([2])).sm1.any()
    assert np.array_equal(cache.sidecar.read("sm1", np.array([2]))[0], expected["sm1"])
