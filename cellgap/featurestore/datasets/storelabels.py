"""A store's own tiles and labels as a label source (`store:PATH[,split=NAME]`), for scoring predictions."""
from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from cellgap.featurestore.datasets.base import LabelledImage
from cellgap.featurestore.errors import DatasetError


class StoreLabels:
    """Ground truth of the completed tiles of a store (optionally one split), named like the tiles."""

    def __init__(self, location: str, split: str | None = None) -> None:
        from cellgap.featurestore.store.reader import open_store

        self.store = open_store(location)
        if not self.store.manifest.dataset.has_labels:
            raise DatasetError(f"{location}: the store holds no labels (an inference-only data set)")
        self.indices = self.store.indices(split)
        if len(self.indices) == 0:
            raise DatasetError(f"{location}: no completed tiles{'' if split is None else f' in split {split!r}'}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.store.class_names

    @cached_property
    def names(self) -> Sequence[str]:
        return [self.store.names[int(i)] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> LabelledImage:
        tile = int(self.indices[index])
        instances, classes = self.store.read_labels(np.array([tile]))
        return LabelledImage(name=self.store.names[tile], instances=instances[0], classes=classes[0],
                             tissue=self.store.tissues[tile])


def parse_store_spec(text: str, spec: str) -> tuple[str, str | None]:
    """`PATH[,split=NAME]` -> (PATH, NAME or None)."""
    path, _, option = text.partition(",split=")
    if "," in option:
        raise DatasetError(f"{spec!r}: expected store:PATH[,split=train|valid|test]")
    return path, (option or None)
