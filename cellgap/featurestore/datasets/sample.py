"""The built-in sample data set: seeded synthetic H&E tiles (`synthetic:N[,seed=S][,classes=K]`)."""
from __future__ import annotations

from functools import cached_property

from cellgap.featurestore.datasets.base import DatasetInfo, LabelledImage, Tile, TileMeta
from cellgap.featurestore.datasets.splits import stratified_group_split

SAMPLE_MAGNIFICATION = 20  # nucleus sizes of the generator match 20x (lymphocytes ~11 px)


class SyntheticDataset:
    """N synthetic tiles; tile i is generated from seed (seed * 1_000_003 + i), so any subset is reproducible."""

    def __init__(self, n_tiles: int, seed: int = 0, n_classes: int = 3, tile_size: int = 256,
                 split_seed: int = 0) -> None:
        self.n_tiles, self.seed, self.n_classes, self.tile_size, self.split_seed = n_tiles, seed, n_classes, tile_size, split_seed

    def tile_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    @property
    def class_names(self) -> tuple[str, ...]:
        from cellgap.featurestore.datasets.synthetic import CLASS_NAMES

        return tuple(CLASS_NAMES[: self.n_classes])

    @property
    def names(self) -> list[str]:
        return [f"synthetic_{self.seed}_{i:05d}" for i in range(self.n_tiles)]

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(
            format="synthetic",
            path=f"{self.n_tiles},seed={self.seed},classes={self.n_classes}",
            class_names=self.class_names,
            magnification=SAMPLE_MAGNIFICATION,
            has_labels=True,
            tile_size=self.tile_size,
            split_policy=f"seeded-stratified(seed={self.split_seed})",
        )

    def __len__(self) -> int:
        return self.n_tiles

    @cached_property
    def _splits(self) -> list[str]:
        return stratified_group_split(self.names, [""] * self.n_tiles, self.split_seed)

    def metas(self) -> list[TileMeta]:
        return list(self._metas)

    @cached_property
    def _metas(self) -> list[TileMeta]:
        return [TileMeta(name=n, source="generated", split=s, tissue="synthetic") for n, s in zip(self.names, self._splits)]

    def __getitem__(self, index: int) -> Tile:
        from cellgap.featurestore.datasets.synthetic import make_tile

        if not 0 <= index < self.n_tiles:
            raise IndexError(index)
        tile = make_tile(self.tile_seed(index), size=self.tile_size, n_classes=self.n_classes)
        return Tile(image=tile.image, instances=tile.instances, classes=tile.classes, meta=self._metas[index])

    def labelled(self, index: int) -> LabelledImage:
        tile = self[index]
        assert tile.instances is not None  # generated tiles are always labelled
        return LabelledImage(name=tile.meta.name, instances=tile.instances, classes=tile.classes, tissue="synthetic")
