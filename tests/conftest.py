"""Shared fixtures: small data sets written in every supported format from the synthetic generator, torch's
thread count held for a test, and a call run in a thread that must not hang."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set for a block and restored after it (a process-wide setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def error_of(call: Callable[[], object], timeout: float) -> BaseException | None:
    """Run `call` in a daemon thread and return what it raised (None if nothing); fails the test if it is still
    running after `timeout` seconds, which is how a hang shows up."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s: it hung"
    return raised[0] if raised else None


def synthetic_tiles(n: int, seed: int = 0, n_classes: int = 3, size: int = 256):
    from cellgap.featurestore.datasets.synthetic import make_tile

    return [make_tile(seed * 1000 + i, size=size, n_classes=n_classes) for i in range(n)]


@pytest.fixture(scope="session")
def tiles4():
    return synthetic_tiles(4)


def write_pannuke(folder: Path, tiles, tissues=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(tiles)
    images = np.stack([t.image for t in tiles]).astype(np.float64)
    masks = np.zeros((n, 256, 256, 6), np.float64)
    for i, tile in enumerate(tiles):
        for instance in np.unique(tile.instances)[1:]:
            cls = int(tile.classes[tile.instances == instance][0])
            channel = (cls - 1) % 5
            masks[i, ..., channel][tile.instances == instance] = instance  # ids repeat across channels
        masks[i, ..., 5] = (tile.instances == 0)
    np.save(folder / "images.npy", images)
    np.save(folder / "masks.npy", masks)
    np.save(folder / "types.npy", np.array(tissues or ["Breast", "Colon"] * (n // 2) + ["Breast"] * (n % 2)))
    return folder


def write_conic(folder: Path, tiles, patch_info: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", np.stack([t.image for t in tiles]))
    np.save(folder / "labels.npy", np.stack([np.stack([t.instances, t.classes.astype(np.int32)], -1) for t in tiles]))
    if patch_info:
        names = [f"{'consep' if i % 2 else 'crag'}_{i // 2}-{i:04d}" for i in range(len(tiles))]
        (folder / "patch_info.csv").write_text("patch_info\n" + "\n".join(names) + "\n")
    return folder


def write_folder(folder: Path, tiles, label_kind: str = "npy2", names=None) -> Path:
    from skimage import io

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    for i, tile in enumerate(tiles):
        name = names[i] if names else f"tile{i}"
        io.imsave(folder / "images" / f"{name}.png", tile.image, check_contrast=False)
        if label_kind == "npy2":
            np.save(folder / "labels" / f"{name}.npy", np.stack([tile.instances, tile.classes.astype(np.int32)], -1))
        elif label_kind == "npy":
            np.save(folder / "labels" / f"{name}.npy", tile.instances)
        elif label_kind == "mat":
            from scipy.io import savemat

            ids = np.unique(tile.instances)[1:]
            types = np.array([int(tile.classes[tile.instances == k][0]) for k in ids])
            savemat(folder / "labels" / f"{name}.mat", {"inst_map": tile.instances, "inst_type": types[:, None]})
        elif label_kind == "tif":
            import tifffile

            tifffile.imwrite(folder / "labels" / f"{name}.tif", tile.instances)
    return folder


def write_cytodark0(root: Path, images, labels, folds) -> Path:
    import tifffile
    from skimage import io

    base = root / "20x" / "1024x1024"
    (base / "image").mkdir(parents=True, exist_ok=True)
    (base / "label").mkdir(exist_ok=True)
    rows = ["img_id,fold"]
    for i, (image, label, fold) in enumerate(zip(images, labels, folds)):
        io.imsave(base / "image" / f"img{i}.png", image, check_contrast=False)
        tifffile.imwrite(base / "label" / f"img{i}.tiff", label)
        rows.append(f"img{i},{fold}")
    (base / "folds.csv").write_text("\n".join(rows) + "\n")
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where CUDA is present and are skipped, saying so, everywhere else."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
