"""Extraction into the store, the read API, manifest checks, codecs and dtypes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from cellgap.featurestore.encoders import EncoderSettings
from cellgap.featurestore.errors import ManifestMismatchError, StoreError
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.job import run_extraction
from cellgap.featurestore.store import open_store
from cellgap.featurestore.store.manifest import ATTRIBUTE
from tests.conftest import write_conic


def extract(store, dataset="synthetic:6", encoder="convnext_atto", **options):
    settings = EncoderSettings(name=encoder, pretrained=False, **options.pop("encoder_options", {}))
    config = ExtractConfig(dataset=dataset, store=str(store), encoder=settings, progress=False,
                           shard_tiles=options.pop("shard_tiles", 4), batch_size=options.pop("batch_size", 3), **options)
    return run_extraction(config)


@pytest.fixture(scope="module")
def conic_dir(tmp_path_factory):
    from tests.conftest import synthetic_tiles

    return write_conic(tmp_path_factory.mktemp("conic") / "conic", synthetic_tiles(6, seed=2))


@pytest.fixture(scope="module")
def store6(tmp_path_factory, conic_dir):
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    extract(path, dataset=f"conic:{conic_dir}")
    return path


def test_store_holds_tiles_labels_and_every_layer(store6, conic_dir):
    store = open_store(str(store6))
    assert store.n_tiles == 6 and store.done.all()
    images = np.load(conic_dir / "images.npy")
    labels = np.load(conic_dir / "labels.npy")
    order = np.array([4, 0, 5, 2])
    batch = store.read_batch(order)
    assert np.array_equal(batch.images, images[order])
    assert np.array_equal(batch.instances, labels[order, ..., 0])
    assert np.array_equal(batch.classes, labels[order, ..., 1])
    assert [(n, v.shape) for n, v in batch.features.items()] == [
        ("stage0", (4, 40, 64, 64)), ("stage1", (4, 80, 32, 32)), ("stage2", (4, 160, 16, 16)), ("stage3", (4, 320, 8, 8))]
    assert store.class_names[0] == "Neutrophil" and store.manifest.dataset.magnification == 20


def test_features_equal_a_fresh_forward_pass(store6, conic_dir):
    import torch

    from cellgap.featurestore.encoders import FrozenEncoder

    encoder = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False))
    images = torch.from_numpy(np.load(conic_dir / "images.npy")[:3])
    expected = encoder(images)
    store = open_store(str(store6), expect_encoder=encoder.description)
    for layer, values in zip(store.manifest.layer_names, expected):
        stored = store.read_features(np.arange(3), layer)
        np.testing.assert_allclose(stored, values.numpy(), rtol=2e-3, atol=2e-3)  # float16 storage


def test_our_shard_files_and_zarr_python_agree(store6):
    """The direct shard reader/writer and zarr-python read the same values from every sharded array."""
    store = open_store(str(store6))
    group = zarr.open_group(str(store6), mode="r")
    indices = np.array([5, 1, 3])
    for path in ["tiles/image", "tiles/instances", "tiles/classes"] + [f"features/{n}" for n in store.manifest.layer_names]:
        tile_array = store._tile_array(path)
        assert tile_array.fast is not None, path
        assert np.array_equal(tile_array.read(indices), np.asarray(group[path][:])[indices]), path


def test_pixel_hashes_are_xxh3_of_each_tile(store6, conic_dir):
    import xxhash

    images = np.load(conic_dir / "images.npy")
    group = zarr.open_group(str(store6), mode="r")
    stored = np.asarray(group["meta/pixel_xxh3_128"][:])
    assert open_store(str(store6)).manifest.pixel_hash == "xxh3_128" and "meta/pixel_sha256" not in group
    assert [bytes(row).hex() for row in stored] == [xxhash.xxh3_128_hexdigest(image.tobytes()) for image in images]


def test_a_store_written_with_sha256_keeps_hashing_with_sha256_when_resumed(tmp_path, conic_dir, monkeypatch):
    """Stores from before xxh3 (no `pixel_hash` in the manifest) hold sha256; a resumed run adds sha256 rows."""
    import hashlib

    from cellgap.featurestore.extract.job import run_plan
    from cellgap.featurestore.extract.plan import plan_extraction
    from cellgap.featurestore.store.writer import StoreWriter

    config = ExtractConfig(dataset=f"conic:{conic_dir}", store=str(tmp_path / "old.zarr"), shard_tiles=2,
                           encoder=EncoderSettings(name="convnext_atto", pretrained=False), progress=False)
    plan = plan_extraction(config)
    plan.manifest = plan.manifest.model_copy(update={"pixel_hash": "sha256"})
    real_write = StoreWriter.write_shard
    calls = []

    def first_shard_only(self, data, io=None):
        calls.append(data.shard)
        if len(calls) == 1:
            real_write(self, data, io)

    monkeypatch.setattr(StoreWriter, "write_shard", first_shard_only)
    run_plan(plan)  # only one shard reaches the disk: an interrupted older run
    monkeypatch.undo()
    group = zarr.open_group(config.store, mode="r+")
    attributes = group.attrs[ATTRIBUTE]
    del attributes["pixel_hash"]  # as an older cellgap wrote it
    group.attrs[ATTRIBUTE] = attributes
    assert int(np.asarray(group["done"][:]).sum()) == 2
    run_extraction(config)
    store = open_store(config.store)
    assert store.done.all() and store.manifest.pixel_hash == "sha256" and store.manifest.pixels_sha256 is not None
    images = np.load(conic_dir / "images.npy")
    stored = np.asarray(zarr.open_group(config.store, mode="r")["meta/pixel_sha256"][:])
    assert [bytes(row).hex() for row in stored] == [hashlib.sha256(image.tobytes()).hexdigest() for image in images]


def test_manifest_records_provenance(store6):
    manifest = open_store(str(store6)).manifest
    assert manifest.schema_version == 1 and manifest.encoder.weights_source == "random:seed=0"
    assert len(manifest.encoder.weights_sha256) == 64 and manifest.pixels_sha256 is not None
    assert manifest.encoder.mean == (0.485, 0.456, 0.406) and manifest.storage.dtype == "float16"
    assert manifest.dataset.format == "conic" and manifest.dataset.n_tiles == 6


def test_rerun_on_complete_store_does_nothing(store6, conic_dir):
    before = {p.name: p.stat().st_mtime_ns for p in (store6 / "features" / "stage0").glob("c.*")}
    assert len(before) == 2  # 6 tiles in shards of 4
    summary = extract(store6, dataset=f"conic:{conic_dir}")
    assert summary.already_complete and summary.tiles_written == 0
    assert "nothing to do" in summary.lines()[0]
    assert before == {p.name: p.stat().st_mtime_ns for p in (store6 / "features" / "stage0").glob("c.*")}


def test_store_of_another_encoder_is_refused(store6, conic_dir):
    with pytest.raises(ManifestMismatchError, match="written by encoder 'convnext_atto'.*asks for 'vit_tiny'"):
        extract(store6, dataset=f"conic:{conic_dir}", encoder="vit_tiny")
    with pytest.raises(ManifestMismatchError, match="weights_sha256"):
        extract(store6, dataset=f"conic:{conic_dir}", encoder_options={"seed": 3})
    with pytest.raises(ManifestMismatchError, match="storage settings"):
        extract(store6, dataset=f"conic:{conic_dir}", dtype="int8")
    from cellgap.featurestore.encoders import FrozenEncoder

    other = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False, layers="0,1"))
    with pytest.raises(ManifestMismatchError, match="holds features of encoder"):
        open_store(str(store6), expect_encoder=other.description)


def test_unknown_schema_and_foreign_folders_are_refused(tmp_path, store6):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store6, copy)
    group = zarr.open_group(str(copy), mode="r+")
    manifest = dict(group.attrs[ATTRIBUTE])
    group.attrs[ATTRIBUTE] = {**manifest, "schema_version": 99}
    with pytest.raises(StoreError, match="schema version 99 is not supported"):
        open_store(str(copy))
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not a cellgap store"):
        extract(tmp_path / "notastore")
    with pytest.raises(StoreError, match="no store here"):
        open_store(str(tmp_path / "missing.zarr"))


@pytest.mark.parametrize("root", [b'{"zarr_format": 3, "node_type": "group", "attributes": {}}', b'{"zarr_for'])
def test_a_kill_right_after_the_root_group_was_written_is_resumed(tmp_path, root):
    """kill -9 between zarr's first write and the creation marker leaves an empty root: start it again."""
    path = tmp_path / "cut.zarr"
    path.mkdir()
    (path / "zarr.json").write_bytes(root)
    extract(path, dataset="synthetic:2")
    assert open_store(str(path)).manifest.dataset.n_tiles == 2


def test_int8_stores_half_the_bytes_within_a_few_percent(tmp_path, store6, conic_dir):
    path = tmp_path / "int8.zarr"
    extract(path, dataset=f"conic:{conic_dir}", dtype="int8")
    int8, f16 = open_store(str(path)), open_store(str(store6))
    for layer in f16.manifest.layer_names:
        a, b = int8.read_features(np.arange(6), layer), f16.read_features(np.arange(6), layer)
        assert np.abs(a - b).mean() / np.abs(b).mean() < 0.02
        codes, scale = int8.read_stored_features(np.arange(2), layer)
        assert codes.dtype == np.int8 and scale.shape == (2, codes.shape[1])
    def size(p):
        return sum(f.stat().st_size for f in (p / "features").rglob("*") if f.is_file())
    assert size(path) < 0.6 * size(store6)


@pytest.mark.parametrize("codec", ["zstd", "blosc-lz4"])
def test_compressed_codecs_read_back_the_same_values(tmp_path, store6, conic_dir, codec):
    path = tmp_path / f"{codec}.zarr"
    extract(path, dataset=f"conic:{conic_dir}", codec=codec)
    a, b = open_store(str(path)), open_store(str(store6))
    for layer in b.manifest.layer_names:
        assert np.array_equal(a.read_features(np.arange(6), layer), b.read_features(np.arange(6), layer))


def test_views_store_features_of_transformed_tiles(tmp_path):
    import torch

    from cellgap.core.views import apply_view
    from cellgap.featurestore.encoders import FrozenEncoder

    path = tmp_path / "views.zarr"
    extract(path, dataset="synthetic:2", views="flips")
    store = open_store(str(path))
    assert store.views == ("identity", "flip", "flip_rot180", "rot180")
    encoder = FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False))
    image = torch.from_numpy(store.read_images(np.array([1])))
    expected = encoder(apply_view(image, "rot180", axes=(1, 2)))[0].numpy()
    np.testing.assert_allclose(store.read_features(np.array([1]), "stage0", view="rot180"), expected, atol=3e-3, rtol=3e-3)


def test_store_info_json(store6, capsys):
    from cellgap.cli import main

    assert main(["store", "info", str(store6), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["tiles"]["total"] == 6
    assert {a["path"] for a in info["arrays"]} >= {"tiles/image", "done", "features/stage3"}
    assert info["manifest"]["encoder"]["name"] == "convnext_atto"
    assert main(["store", "info", str(store6)]) == 0
    assert "stage3" in capsys.readouterr().out


def test_catalog_tells_stores_from_other_folders(tmp_path, store6):
    from cellgap.featurestore.store.catalog import scan_stores, store_state
    from cellgap.featurestore.store.writer import CREATING

    shutil.copytree(store6, tmp_path / "b-store.zarr")
    (tmp_path / "a-other").mkdir()
    (tmp_path / "a-other" / "notes.txt").write_text("not a store")
    half = tmp_path / "c-half.zarr"
    shutil.copytree(store6, half)
    group = zarr.open_group(str(half), mode="r+")
    group.attrs[CREATING] = True
    assert [store_state(tmp_path / n) for n in ("missing", "a-other", "b-store.zarr", "c-half.zarr")] == [
        "absent", "other", "store", "creating"]
    assert [(p.name, m.dataset.n_tiles) for p, m in scan_stores(tmp_path)] == [("b-store.zarr", 6)]
