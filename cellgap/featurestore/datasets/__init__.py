"""Data set readers, chosen by a `FORMAT:PATH` spec: pannuke, conic, cytodark0, folder, slides, synthetic.

`open_dataset` gives tiles for extraction; `open_label_source` gives whole labelled images for
evaluation (only the label files need to exist).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cellgap.core.limits import MAX_SEED, MAX_SYNTHETIC_TILES
from cellgap.featurestore.datasets.base import (
    SPLITS,
    DatasetInfo,
    LabelledImage,
    LabelSource,
    Tile,
    TileDataset,
    TileMeta,
)
from cellgap.featurestore.errors import DatasetError

FORMATS: tuple[str, ...] = ("pannuke", "conic", "cytodark0", "folder", "slides", "synthetic")
LABEL_FORMATS: tuple[str, ...] = tuple(f for f in FORMATS if f != "slides") + ("store",)  # slides have no labels

__all__ = [
    "FORMATS", "SPLITS", "DatasetInfo", "LabelSource", "LabelledImage", "Tile", "TileDataset", "TileMeta",
    "open_dataset", "open_label_source", "parse_spec",
]


def parse_spec(spec: str, formats: tuple[str, ...] = FORMATS) -> tuple[str, str]:
    """Split `FORMAT:PATH` and check the format."""
    if ":" not in spec:
        raise DatasetError(f"data set {spec!r} needs a format prefix: one of {', '.join(f + ':' for f in formats)}")
    fmt, _, path = spec.partition(":")
    fmt = fmt.strip().lower()
    if fmt not in formats:
        raise DatasetError(f"unknown data set format {fmt!r} in {spec!r} (known: {', '.join(formats)})")
    if not path:
        raise DatasetError(f"data set {spec!r} has no path after '{fmt}:'")
    return fmt, path


def open_dataset(spec: str, *, tile_size: int = 256, split_seed: int = 0, magnification: int | None = None) -> TileDataset:
    """A random-access tile reader for `FORMAT:PATH` (tile_size applies to formats that cut tiles; slides are
    read at `magnification`, else at their own)."""
    fmt, path = parse_spec(spec)
    if fmt == "slides":
        from cellgap.featurestore.datasets.slides import SlideTiles, parse_slides_spec

        return SlideTiles(parse_slides_spec(path, spec), tile_size=tile_size, magnification=magnification)
    if fmt == "synthetic":
        from cellgap.featurestore.datasets.sample import SyntheticDataset

        options = _synthetic_options(path, spec)
        return SyntheticDataset(options["n"], seed=options["seed"], n_classes=options["classes"],
                                tile_size=tile_size, split_seed=split_seed)
    root = Path(path).expanduser()
    if fmt == "pannuke":
        from cellgap.featurestore.datasets.pannuke import PanNukeDataset

        return PanNukeDataset(root, split_seed=split_seed)
    if fmt == "conic":
        from cellgap.featurestore.datasets.conic import CoNICDataset

        return CoNICDataset(root, split_seed=split_seed)
    if fmt == "cytodark0":
        from cellgap.featurestore.datasets.cytodark0 import open_cytodark0

        return open_cytodark0(root, tile_size=tile_size, split_seed=split_seed)
    from cellgap.featurestore.datasets.folder import FolderLayout, ImageFolderDataset

    layout = FolderLayout(format="folder", image_dir="images", label_dir="labels", class_names=None, magnification=None)
    return ImageFolderDataset(root, layout, tile_size=tile_size, split_seed=split_seed)


def open_label_source(spec: str) -> LabelSource:
    """Whole labelled images of `FORMAT:PATH` for evaluation, in a fixed order with names.

    Besides the data set formats, `store:PATH[,split=NAME]` reads the labels kept in a feature store.
    """
    fmt, path = parse_spec(spec, LABEL_FORMATS)
    if fmt == "store":
        from cellgap.featurestore.datasets.storelabels import StoreLabels, parse_store_spec

        return StoreLabels(*parse_store_spec(path, spec))
    root = Path(path).expanduser()
    if fmt == "pannuke":
        from cellgap.featurestore.datasets.pannuke import PanNukeDataset

        return DatasetLabels(PanNukeDataset(root, need_images=False))
    if fmt == "conic":
        from cellgap.featurestore.datasets.conic import CoNICDataset

        return DatasetLabels(CoNICDataset(root, need_images=False))
    if fmt == "cytodark0":
        from cellgap.featurestore.datasets.cytodark0 import open_cytodark0_labels

        return open_cytodark0_labels(root)
    if fmt == "folder":
        from cellgap.featurestore.datasets.folder import LabelFolder

        return LabelFolder(root)
    return DatasetLabels(open_dataset(spec))


class DatasetLabels:
    """A LabelSource view of a tile data set whose tiles are whole images (pannuke, conic, synthetic)."""

    def __init__(self, dataset: TileDataset) -> None:
        self._dataset = dataset

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._dataset.class_names  # type: ignore[attr-defined]

    @property
    def names(self) -> Sequence[str]:
        return self._dataset.names  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> LabelledImage:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._dataset.labelled(index)  # type: ignore[attr-defined]


def _synthetic_options(text: str, spec: str) -> dict[str, int]:
    """`N[,seed=S][,classes=K]` -> {"n", "seed", "classes"}."""
    head, *rest = [part.strip() for part in text.split(",")]
    options = {"seed": 0, "classes": 3}
    try:
        options["n"] = _bounded_int(head)
        for part in rest:
            key, _, value = part.partition("=")
            if key not in ("seed", "classes"):
                raise ValueError(f"unknown option {key!r}")
            options[key] = _bounded_int(value)
    except ValueError as error:
        raise DatasetError(f"{spec!r}: expected synthetic:N[,seed=S][,classes=K] ({error})") from None
    if not 1 <= options["n"] <= MAX_SYNTHETIC_TILES or not 1 <= options["classes"] <= 6:
        raise DatasetError(f"{spec!r}: N must be between 1 and {MAX_SYNTHETIC_TILES} and classes between 1 and 6")
    if not 0 <= options["seed"] <= MAX_SEED:
        raise DatasetError(f"{spec!r}: seed must be between 0 and {MAX_SEED}")
    return options


def _bounded_int(text: str) -> int:
    """int(text), refusing more than 20 digits before converting (Python's own limit is 4300)."""
    if len(text.strip()) > 20:
        raise ValueError(f"{text[:20]}... has too many digits")
    return int(text)
