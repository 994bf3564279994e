"""Every data set reader on small files written in its own format, and the errors for bad input."""
from __future__ import annotations

import numpy as np
import pytest

from cellgap.featurestore.datasets import open_dataset, open_label_source, parse_spec
from cellgap.featurestore.errors import DatasetError, DatasetNotFoundError
from tests.conftest import write_conic, write_cytodark0, write_folder, write_pannuke


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two instance maps describe the same cells (ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_pannuke_makes_ids_unique_and_keeps_classes(tmp_path, tiles4):
    root = write_pannuke(tmp_path / "fold1", tiles4)
    dataset = open_dataset(f"pannuke:{root}")
    assert len(dataset) == 4 and dataset.info.class_names[0] == "Neoplastic" and dataset.info.magnification == 40
    tile = dataset[1]
    assert tile.image.dtype == np.uint8 and tile.image.shape == (256, 256, 3)
    assert np.array_equal(tile.image, tiles4[1].image)
    assert tile.instances.dtype == np.int32 and tile.classes.dtype == np.uint8
    assert _same_partition(tile.instances, tiles4[1].instances)
    expected_classes = (tiles4[1].classes.astype(int) - 1) % 5 + 1
    assert np.array_equal(tile.classes[tile.instances > 0], expected_classes[tiles4[1].instances > 0])
    assert {m.tissue for m in dataset.metas()} == {"Breast", "Colon"}
    assert "seeded-stratified" in dataset.info.split_policy


def test_pannuke_label_source_needs_no_images(tmp_path, tiles4):
    root = write_pannuke(tmp_path / "fold1", tiles4)
    (root / "images.npy").unlink()
    source = open_label_source(f"pannuke:{root}")
    assert len(source) == 4 and source[0].tissue == "Breast" and source.class_names[1] == "Inflammatory"
    with pytest.raises(DatasetNotFoundError, match="images.npy"):
        open_dataset(f"pannuke:{root}")[0]


def test_conic_groups_patches_of_one_source_into_one_split(tmp_path):
    from tests.conftest import synthetic_tiles

    tiles = synthetic_tiles(12, seed=3)
    root = write_conic(tmp_path / "conic", tiles)
    dataset = open_dataset(f"conic:{root}")
    metas = dataset.metas()
    assert dataset.info.magnification == 20 and len(dataset.info.class_names) == 6
    by_source = {}
    for meta in metas:
        by_source.setdefault(meta.source, set()).add(meta.split)
    assert all(len(splits) == 1 for splits in by_source.values())
    assert {m.split for m in metas} == {"train", "valid", "test"}
    assert {m.tissue for m in metas} == {"consep", "crag"}
    assert np.array_equal(dataset[5].instances, tiles[5].instances)


def test_seeded_split_is_reproducible_and_recorded(tmp_path):
    from tests.conftest import synthetic_tiles

    root = write_conic(tmp_path / "c", synthetic_tiles(10, seed=4), patch_info=False)
    a = [m.split for m in open_dataset(f"conic:{root}", split_seed=1).metas()]
    b = [m.split for m in open_dataset(f"conic:{root}", split_seed=1).metas()]
    c = [m.split for m in open_dataset(f"conic:{root}", split_seed=2).metas()]
    assert a == b and a != c
    assert "seed=1" in open_dataset(f"conic:{root}", split_seed=1).info.split_policy


def test_dataset_split_file_is_kept(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4)
    (root / "folds.csv").write_text("img_id,fold\ntile0.png,2\ntile1,0\ntile2,1\ntile3,0\n")
    dataset = open_dataset(f"folder:{root}")
    assert [m.split for m in dataset.metas()] == ["test", "train", "valid", "train"]
    assert dataset.info.split_policy == "dataset"


@pytest.mark.parametrize("fmt", ["conic", "pannuke", "folder"])
def test_split_file_is_read_once_for_splits_and_info(tmp_path, tiles4, fmt, monkeypatch):
    from cellgap.featurestore.datasets import conic, folder, pannuke

    writers = {"conic": lambda: write_conic(tmp_path / "c", tiles4, patch_info=False),
               "pannuke": lambda: write_pannuke(tmp_path / "p", tiles4), "folder": lambda: write_folder(tmp_path / "f", tiles4)}
    root = writers[fmt]()
    names = ["tile0", "tile1", "tile2", "tile3"] if fmt == "folder" else ["00000", "00001", "00002", "00003"]
    (root / "folds.csv").write_text("img_id,fold\n" + "".join(f"{n},{f}\n" for n, f in zip(names, [2, 0, 1, 0])))
    module = {"conic": conic, "pannuke": pannuke, "folder": folder}[fmt]
    calls = []
    real = module.read_split_file
    monkeypatch.setattr(module, "read_split_file", lambda *args: calls.append(args) or real(*args))
    dataset = open_dataset(f"{fmt}:{root}")
    assert [m.split for m in dataset.metas()] == ["test", "train", "valid", "train"]
    assert [dataset.info.split_policy for _ in range(2)] == ["dataset", "dataset"]  # info asked twice
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["npy2", "npy", "mat", "tif"])
def test_folder_label_kinds(tmp_path, tiles4, kind):
    root = write_folder(tmp_path / kind, tiles4[:2], label_kind=kind)
    dataset = open_dataset(f"folder:{root}")
    tile = dataset[0]
    assert np.array_equal(tile.image, tiles4[0].image)
    assert np.array_equal(tile.instances, tiles4[0].instances)
    if kind in ("npy2", "mat"):
        assert np.array_equal(tile.classes, tiles4[0].classes)
        assert dataset.info.class_names == ("class_1", "class_2", "class_3")[: int(max(t.classes.max() for t in tiles4[:2]))]
    else:
        assert dataset.info.class_names == ()


def test_folder_class_names_file(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:1])
    (root / "classes.json").write_text('{"1": "tumour", "2": "lymphocyte", "3": "stromal"}')
    assert open_dataset(f"folder:{root}").info.class_names == ("tumour", "lymphocyte", "stromal")


def test_folder_class_names_with_padded_ids(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:1])
    (root / "classes.json").write_text('{"02": "lymphocyte", "01": "tumour"}')
    assert open_dataset(f"folder:{root}").info.class_names == ("tumour", "lymphocyte")
    (root / "classes.json").write_text('{"1": "tumour", "01": "again"}')
    with pytest.raises(DatasetError, match="classes.json: class ids must be 1..K"):
        _ = open_dataset(f"folder:{root}").info


def test_folder_cuts_large_images_into_covering_tiles(tmp_path):
    from skimage import io

    from cellgap.featurestore.datasets.synthetic import make_image

    big = make_image(7, 300, 520)
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "labels").mkdir()
    io.imsave(tmp_path / "f" / "images" / "big.png", big.image, check_contrast=False)
    np.save(tmp_path / "f" / "labels" / "big.npy", big.instances)
    dataset = open_dataset(f"folder:{tmp_path / 'f'}", tile_size=256)
    origins = [m.origin for m in dataset.metas()]
    assert origins == [(0, 0), (0, 256), (0, 264), (44, 0), (44, 256), (44, 264)]
    tile = dataset[4]
    assert np.array_equal(tile.image, big.image[44:300, 256:512])
    assert np.array_equal(tile.instances, big.instances[44:300, 256:512])
    assert dataset.metas()[4].name == "big@44_256"


def test_folder_without_labels_is_inference_only(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:2])
    for path in (root / "labels").iterdir():
        path.unlink()
    dataset = open_dataset(f"folder:{root}")
    assert not dataset.info.has_labels
    assert dataset[0].instances is None and dataset[0].classes is None


def test_cytodark0_tiles_and_folds(tmp_path):
    from cellgap.featurestore.datasets.synthetic import make_image

    images, labels = [], []
    for seed in range(3):
        field = make_image(seed, 512, 512)
        images.append(field.image)
        labels.append(field.instances)
    root = write_cytodark0(tmp_path / "cyto", images, labels, folds=[0, 1, 2])
    dataset = open_dataset(f"cytodark0:{root}")
    assert len(dataset) == 12 and dataset.info.class_names == () and dataset.info.magnification == 20
    assert [m.split for m in dataset.metas()][::4] == ["train", "valid", "test"]
    assert np.array_equal(dataset[5].instances, labels[1][0:256, 256:512])
    source = open_label_source(f"cytodark0:{root}")
    assert len(source) == 3 and source[2].instances.shape == (512, 512)


@pytest.mark.parametrize("spec, message", [
    ("bogus:/x", "unknown data set format 'bogus'"),
    ("/just/a/path", "needs a format prefix"),
    ("folder:", "has no path"),
    ("synthetic:abc", "synthetic:N"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DatasetError, match=message):
        parse_spec(spec) if spec != "synthetic:abc" else open_dataset(spec)


def test_missing_and_malformed_files(tmp_path, tiles4):
    with pytest.raises(DatasetNotFoundError, match="masks.npy"):
        open_dataset(f"pannuke:{tmp_path}")
    np.save(tmp_path / "masks.npy", np.zeros((2, 256, 256, 5)))
    with pytest.raises(DatasetError, match=r"expected shape \(N,H,W,6\)"):
        open_dataset(f"pannuke:{tmp_path}")
    conic = write_conic(tmp_path / "conic", tiles4[:2])
    np.save(conic / "images.npy", np.zeros((3, 256, 256, 3), np.uint8))
    with pytest.raises(DatasetError, match="disagree in count"):
        open_dataset(f"conic:{conic}")


def test_label_and_image_of_different_size(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:1], label_kind="npy")
    np.save(root / "labels" / "tile0.npy", np.zeros((200, 256), np.int32))
    with pytest.raises(DatasetError, match=r"label map is 200x256 but image tile0.png is 256x256"):
        open_dataset(f"folder:{root}")[0]


def test_partly_labelled_folder_is_refused(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:2])
    (root / "labels" / "tile1.npy").unlink()
    with pytest.raises(DatasetError, match="1 of 2 images have labels"):
        open_dataset(f"folder:{root}")


def test_empty_mat_label_is_a_dataset_error(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:1], label_kind="mat")
    (root / "labels" / "tile0.mat").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"tile0\.mat: cannot read \.mat file"):
        open_dataset(f"folder:{root}")[0]


def test_wrong_label_dtype_and_shape(tmp_path, tiles4):
    root = write_folder(tmp_path / "f", tiles4[:1])
    np.save(root / "labels" / "tile0.npy", np.zeros((256, 256, 3), np.int32))
    with pytest.raises(DatasetError, match=r"\(H,W\) or \(H,W,2\)"):
        open_dataset(f"folder:{root}")[0]
    np.save(root / "labels" / "tile0.npy", np.full((256, 256), 0.5))
    with pytest.raises(DatasetError, match="non-integer"):
        open_dataset(f"folder:{root}")[0]


def _per_tile(dataset, start: int, stop: int):
    tiles = [dataset[i] for i in range(start, stop)]
    return [np.stack([getattr(t, field) for t in tiles]) for field in ("image", "instances", "classes")]


@pytest.mark.parametrize(("label_dtype", "fast"), [(np.int32, True), (np.uint16, True), (np.int8, True),
                                                   (np.int64, False), (np.uint32, False), (np.float32, False)])
def test_conic_batch_read_equals_tile_reads(tmp_path, tiles4, label_dtype, fast, monkeypatch):
    from cellgap.featurestore.datasets.base import read_tiles
    from cellgap.featurestore.datasets.conic import CoNICDataset

    root = write_conic(tmp_path / "conic", tiles4)
    labels = np.load(root / "labels.npy")
    if label_dtype == np.int8:
        labels = np.minimum(labels, 127)
    np.save(root / "labels.npy", labels.astype(label_dtype))  # wide and float labels take the per-tile path
    images_file = np.load(root / "images.npy")
    np.save(root / "images.npy", np.asfortranarray(images_file))  # a Fortran-ordered file still gives C-ordered tiles
    dataset = open_dataset(f"conic:{root}")
    images, instances, classes = _per_tile(dataset, 1, 4)
    if fast:  # the batch path must not fall back to per-tile reads for plain integer labels
        monkeypatch.setattr(CoNICDataset, "__getitem__", lambda self, index: pytest.fail("per-tile fallback"))
    batch = read_tiles(dataset, 1, 4, 256)
    assert batch.images.dtype == np.uint8 and batch.instances.dtype == np.int32 and batch.classes.dtype == np.uint8
    assert np.array_equal(batch.images, images) and np.array_equal(batch.instances, instances)
    assert np.array_equal(batch.classes, classes)
    assert batch.images.flags.c_contiguous and batch.instances.flags.c_contiguous


def test_conic_boolean_labels_are_refused_in_batches_too(tmp_path, tiles4):
    from cellgap.featurestore.datasets.base import read_tiles

    root = write_conic(tmp_path / "conic", tiles4)
    np.save(root / "labels.npy", np.load(root / "labels.npy") > 0)
    with pytest.raises(DatasetError, match=r"labels\.npy\[0\]: instance map must hold integer ids, got dtype bool"):
        read_tiles(open_dataset(f"conic:{root}"), 0, 2, 256)


def test_conic_batch_read_names_the_bad_tile(tmp_path, tiles4):
    from cellgap.featurestore.datasets.base import read_tiles

    root = write_conic(tmp_path / "conic", tiles4)
    labels = np.load(root / "labels.npy")
    labels[2, 5, 5, 1] = 300  # class id out of range in the batch's second tile
    np.save(root / "labels.npy", labels)
    dataset = open_dataset(f"conic:{root}")
    assert read_tiles(dataset, 0, 2, 256).classes.shape == (2, 256, 256)
    with pytest.raises(DatasetError, match=r"labels\.npy\[2\]: class ids must lie in 0\.\.255"):
        read_tiles(dataset, 1, 4, 256)
    labels[2, 5, 5, 1] = 1
    labels[3, 0, 0, 0] = -4
    np.save(root / "labels.npy", labels)
    with pytest.raises(DatasetError, match=r"labels\.npy\[3\]: instance ids must lie"):
        read_tiles(open_dataset(f"conic:{root}"), 0, 4, 256)


@pytest.mark.parametrize(("instance", "cls", "error"), [
    (2**31 - 1, 255, None),  # the largest valid values stay on the one-pass path
    (7, 256, r"labels\.npy\[2\]: class ids must lie in 0\.\.255"),
    (7, -1, r"labels\.npy\[2\]: class ids must lie in 0\.\.255"),
    (-1, 1, r"labels\.npy\[2\]: instance ids must lie"),
])
def test_conic_int32_pairs_check_every_bit(tmp_path, tiles4, instance, cls, error, monkeypatch):
    from cellgap.featurestore.datasets.base import read_tiles
    from cellgap.featurestore.datasets.conic import CoNICDataset

    root = write_conic(tmp_path / "conic", tiles4)
    labels = np.load(root / "labels.npy").astype("<i4")
    labels[2, 9, 9] = (instance, cls)
    np.save(root / "labels.npy", labels)
    dataset = open_dataset(f"conic:{root}")
    if error is not None:
        with pytest.raises(DatasetError, match=error):
            read_tiles(dataset, 1, 4, 256)
        return
    monkeypatch.setattr(CoNICDataset, "__getitem__", lambda self, index: pytest.fail("per-tile fallback"))
    batch = read_tiles(dataset, 1, 4, 256)
    assert batch.instances[1, 9, 9] == instance and batch.classes[1, 9, 9] == cls
    assert np.array_equal(batch.instances, labels[1:4, ..., 0]) and np.array_equal(batch.classes, labels[1:4, ..., 1])


def test_conic_big_endian_labels_read_alike(tmp_path, tiles4):
    from cellgap.featurestore.datasets.base import read_tiles

    root = write_conic(tmp_path / "conic", tiles4)
    labels = np.load(root / "labels.npy")
    np.save(root / "labels.npy", labels.astype(">i4"))
    batch = read_tiles(open_dataset(f"conic:{root}"), 0, 4, 256)
    assert np.array_equal(batch.instances, labels[..., 0]) and np.array_equal(batch.classes, labels[..., 1])
    assert batch.instances.dtype == np.int32 and batch.classes.dtype == np.uint8


def test_batch_read_checks_tile_size(tmp_path, tiles4):
    from cellgap.featurestore.datasets.base import read_tiles

    conic = open_dataset(f"conic:{write_conic(tmp_path / 'conic', tiles4)}")
    with pytest.raises(DatasetError, match=r"tile crag_0-0000: image is \(256, 256, 3\), expected \(128, 128, 3\)"):
        read_tiles(conic, 0, 2, 128)
    folder = open_dataset(f"folder:{write_folder(tmp_path / 'f', tiles4[:2])}")
    assert read_tiles(folder, 0, 2, 256).images.shape == (2, 256, 256, 3)
    with pytest.raises(DatasetError, match=r"image is \(256, 256, 3\), expected \(128, 128, 3\)"):
        read_tiles(folder, 0, 2, 128)


@pytest.mark.parametrize("kind", ["conic", "pannuke", "folder"])
def test_tile_metadata_is_listed_once_per_reader(tmp_path, tiles4, monkeypatch, kind):
    from cellgap.featurestore.datasets.base import MetasOnce

    root = {"conic": write_conic, "pannuke": write_pannuke, "folder": write_folder}[kind](tmp_path / kind, tiles4)
    dataset = open_dataset(f"{kind}:{root}")
    assert isinstance(dataset, MetasOnce)
    listed = []
    original = type(dataset).list_metas
    monkeypatch.setattr(type(dataset), "list_metas", lambda self: listed.append(1) or original(self))
    names = [meta.name for meta in dataset.metas()]
    assert [dataset[i].meta.name for i in range(len(dataset))] == names and dataset.metas() is dataset.metas()
    assert listed == [1]
