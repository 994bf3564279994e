"""`extract --dataset slides:PATH`: the tissue tiles of slides, at one pixel size, with their level-0 positions."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellgap.featurestore.datasets import open_dataset
from cellgap.featurestore.errors import DatasetError
from cellgap.featurestore.slides.reader import open_slide
from cellgap.featurestore.slides.synthetic import write_synthetic_slide
from cellgap.featurestore.store import open_store

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    write_synthetic_slide(folder / "a.tif", 2048, 1536, mpp=0.25, tissue_fraction=0.3, seed=1)
    write_synthetic_slide(folder / "b.tif", 1536, 1536, mpp=0.25, tissue_fraction=0.2, seed=2)
    return folder


def test_tiles_are_the_tissue_of_each_slide_at_its_level0_position(slides):
    dataset = open_dataset(f"slides:{slides}")
    metas = dataset.metas()
    assert dataset.info.magnification == 40 and dataset.info.mpp == 0.25 and not dataset.info.has_labels
    assert {m.source for m in metas} == {"a.tif", "b.tif"}
    every = (2048 // 256) * (1536 // 256) + (1536 // 256) ** 2
    assert 4 <= len(metas) < every  # glass is skipped
    with open_slide(slides / "a.tif") as slide:
        first = next(i for i, m in enumerate(metas) if m.source == "a.tif")
        y, x = metas[first].origin
        assert metas[first].name == f"a_x{x}_y{y}" and x % 256 == 0 and y % 256 == 0
        assert np.array_equal(dataset[first].image, slide.read(x, y, 256, 256))
        assert (dataset[first].image.min(axis=2) < 200).mean() > 0.1  # a tissue tile, not glass
    again = pickle.loads(pickle.dumps(dataset))  # travels to dask workers and opens its own handles there
    assert np.array_equal(again[first].image, dataset[first].image)


def test_a_40x_slide_is_read_at_20x_when_asked(slides):
    dataset = open_dataset(f"slides:{slides / 'a.tif'},tissue=0", magnification=20)
    metas = dataset.metas()
    assert dataset.info.magnification == 20 and dataset.info.mpp == 0.5
    assert len(metas) == (2048 // 512) * (1536 // 512) and metas[1].origin == (0, 512)
    with open_slide(slides / "a.tif") as slide:
        assert np.array_equal(dataset[5].image, slide.read(metas[5].origin[1], metas[5].origin[0], 256, 256, 2.0))


def test_bad_slide_specs_are_one_clear_error(tmp_path, slides):
    with pytest.raises(DatasetError, match="unknown option 'level'"):
        open_dataset(f"slides:{slides},level=2")
    with pytest.raises(DatasetError, match="tissue must be a share"):
        open_dataset(f"slides:{slides},tissue=3")
    (tmp_path / "notes.txt").write_text("no slides")
    with pytest.raises(DatasetError, match="holds no slides"):
        open_dataset(f"slides:{tmp_path}")
    write_synthetic_slide(tmp_path / "odd.tif", 512, 512, mpp=1.0)
    with pytest.raises(DatasetError, match="neither 20x nor 40x"):
        open_dataset(f"slides:{tmp_path / 'odd.tif'}")


def test_extract_builds_a_store_from_slides_and_resumes_to_nothing(tmp_path, slides):
    store = tmp_path / "s.zarr"
    args = [CELLGAP, "extract", "--dataset", f"slides:{slides}", "--encoder", "convnext_atto", "--pretrained",
            "false", "--store", str(store), "--batch-size", "4", "--shard-tiles", "4", "--no-progress"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    opened = open_store(str(store))
    dataset = open_dataset(f"slides:{slides}")
    assert opened.n_tiles == len(dataset) and opened.done.all()
    assert opened.manifest.dataset.magnification == 40 and opened.manifest.dataset.mpp == 0.25
    assert opened.names == [m.name for m in dataset.metas()]
    assert [tuple(o) for o in opened.origins] == [m.origin for m in dataset.metas()]
    assert np.array_equal(opened.read_images(np.array([2]))[0], dataset[2].image)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already stored; nothing to do" in again.stdout
