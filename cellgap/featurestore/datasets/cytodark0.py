"""CytoDArk0 (Zenodo 13694738): `20x/1024x1024/` or `40x/2048x2048/` with image/, label/ and folds.csv.

Nissl-stained brain sections with instance labels only (no cell types, so no class head). Large
images are cut into tiles; the data set's folds.csv (0 train, 1 valid, 2 test) is kept.
"""
from __future__ import annotations

from pathlib import Path

from cellgap.featurestore.datasets.folder import FolderLayout, ImageFolderDataset, LabelFolder
from cellgap.featurestore.errors import DatasetError

KNOWN_SUBFOLDERS: tuple[str, ...] = ("20x/1024x1024", "40x/2048x2048")


def resolve_root(path: Path) -> Path:
    """The folder that holds image/ and label/: the path itself, or its single known subfolder."""
    if (path / "image").is_dir():
        return path
    present = [path / sub for sub in KNOWN_SUBFOLDERS if (path / sub / "image").is_dir()]
    if len(present) == 1:
        return present[0]
    if len(present) > 1:
        options = ", ".join(f"cytodark0:{p}" for p in present)
        raise DatasetError(f"{path}: holds both magnifications; choose one: {options}")
    raise DatasetError(f"{path}: not a CytoDArk0 folder (expected image/ and label/, or {' or '.join(KNOWN_SUBFOLDERS)})")


def magnification_of(path: Path) -> int:
    """40 when the path names the 40x part of the data set, otherwise 20."""
    return 40 if "40x" in path.parts else 20


def layout_for(root: Path) -> FolderLayout:
    return FolderLayout(format="cytodark0", image_dir="image", label_dir="label", class_names=(),
                        magnification=magnification_of(root))


def open_cytodark0(path: Path, tile_size: int = 256, split_seed: int = 0) -> ImageFolderDataset:
    root = resolve_root(path)
    dataset = ImageFolderDataset(root, layout_for(root), tile_size=tile_size, split_seed=split_seed)
    if not dataset.has_labels:
        raise DatasetError(f"{root / 'label'}: CytoDArk0 labels not found")
    return dataset


def open_cytodark0_labels(path: Path) -> LabelFolder:
    return LabelFolder(resolve_root(path), label_dir="label", class_names=())
