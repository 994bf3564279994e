"""The manifest against the arrays it describes: an edited or damaged manifest is refused when a store is opened,
in one line naming the field and the array, not later inside the decoder (a channel mismatch in a convolution)."""
from __future__ import annotations

import numpy as np
import zarr

from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.arrays import array_at
from cellgap.featurestore.store.manifest import Manifest


def check_arrays(group: zarr.Group, manifest: Manifest, where: str) -> None:
    """Every array the manifest implies has the tile count, tile size, feature shape and dtype it says.

    Feature arrays must exist; other arrays are checked where present (older stores lack some)."""
    n_tiles = manifest.dataset.n_tiles
    layers = {layer.name: layer for layer in manifest.encoder.layers}
    specs = layout.tile_arrays(n_tiles, manifest.dataset.tile_size, manifest.dataset.has_labels, manifest.pixel_hash)
    specs += layout.feature_arrays(n_tiles, [(n, x.channels, x.height, x.width) for n, x in layers.items()],
                                   manifest.storage.dtype, manifest.storage.codec, manifest.storage.views)
    for spec in specs:
        is_feature = spec.path.startswith((layout.FEATURES + "/", layout.VIEWS + "/"))
        try:
            array = array_at(group, spec.path)
        except KeyError:
            if is_feature:
                raise StoreError(f"{where}: the manifest lists layer {spec.path.rsplit('/', 1)[-1]!r} but the store "
                                 f"has no array {spec.path}; the manifest was edited or the store is damaged") from None
            continue
        shape = tuple(int(s) for s in array.shape)
        if shape[:1] != (n_tiles,):
            raise StoreError(f"{where}: the manifest says dataset.n_tiles {n_tiles} but {spec.path} holds "
                             f"{shape[0] if shape else 0} tiles; the manifest was edited or the store is damaged")
        if shape != spec.shape:
            layer = layers.get(spec.path.rsplit("/", 1)[-1].removesuffix("_scale")) if is_feature else None
            field = (f"encoder layer {layer.name!r} (channels {layer.channels}, {layer.height}x{layer.width})"
                     if layer is not None else f"dataset.tile_size {manifest.dataset.tile_size}")
            raise StoreError(f"{where}: the manifest says {field} but {spec.path} is shaped {shape[1:]}; the "
                             "manifest was edited or the store is damaged")
        if is_feature and np.dtype(array.dtype) != np.dtype(spec.dtype):
            raise StoreError(f"{where}: the manifest says storage.dtype {manifest.storage.dtype} but {spec.path} "
                             f"holds {array.dtype}; the manifest was edited or the store is damaged")
