"""Damaged stores are refused on read and named by `cellgap store verify`, never read back as data."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from cellgap.featurestore.encoders import EncoderSettings
from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.job import run_extraction
from cellgap.featurestore.store import layout, open_store
from cellgap.featurestore.store.arrays import array_at, shard_file, shard_layout
from cellgap.featurestore.store.verify import verify_store

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("damage") / "s.zarr"
    run_extraction(ExtractConfig(dataset="synthetic:8,seed=3", store=str(path), shard_tiles=4, batch_size=4,
                                 encoder=EncoderSettings(name="convnext_atto", pretrained=False), progress=False))
    return path


@pytest.fixture()
def store(tmp_path, intact) -> Path:
    copy = tmp_path / "s.zarr"
    shutil.copytree(intact, copy)
    return copy


def _layer(path: Path) -> str:
    return layout.feature_path(open_store(str(path)).manifest.layer_names[0])


def _shard(path: Path, array_path: str, shard: int = 0) -> Path:
    return shard_file(path, array_at(zarr.open_group(str(path), mode="r"), array_path), shard)


def _chunk_span(path: Path, array_path: str, tile: int) -> tuple[Path, int, int]:
    """(shard file, offset, length) of one tile's inner chunk."""
    array = array_at(zarr.open_group(str(path), mode="r"), array_path)
    shard_tiles = shard_layout(array).shard_tiles
    file = shard_file(path, array, tile // shard_tiles)
    data = file.read_bytes()
    index_start = len(data) - shard_tiles * 16 - 4
    offset, length = struct.unpack_from("<QQ", data, index_start + 16 * (tile % shard_tiles))
    return file, offset, length


def test_new_stores_carry_a_checksum_per_tile(intact):
    group = zarr.open_group(str(intact), mode="r")
    for path in (layout.IMAGE, layout.INSTANCES, _layer(intact)):
        assert shard_layout(array_at(group, path)).checksummed, path


def test_random_bytes_in_a_feature_chunk_are_refused_naming_the_tile(store):
    feature = _layer(store)
    file, offset, length = _chunk_span(store, feature, 6)
    data = bytearray(file.read_bytes())
    data[offset + length // 2 : offset + length // 2 + 8] = np.random.default_rng(0).bytes(8)
    file.write_bytes(bytes(data))
    reader = open_store(str(store))
    with pytest.raises(StoreError, match="tile 6 fails its checksum"):
        reader.read_features(np.array([4, 5, 6, 7]), reader.manifest.layer_names[0])
    with pytest.raises(Exception, match="(?i)checksum"):  # zarr-python refuses the same bytes
        np.asarray(array_at(zarr.open_group(str(store), mode="r"), feature)[6])
    report = verify_store(open_store(str(store)), progress=False)
    assert report.damaged_tiles == [6]


def test_swapped_shard_index_entries_are_refused_not_read_as_the_other_tile(store):
    feature = _layer(store)
    file, _, _ = _chunk_span(store, feature, 0)
    data = bytearray(file.read_bytes())
    shard_tiles = 4
    start = len(data) - shard_tiles * 16 - 4
    first, second = data[start : start + 16], data[start + 16 : start + 32]
    data[start : start + 16], data[start + 16 : start + 32] = second, first
    file.write_bytes(bytes(data))
    reader = open_store(str(store))
    with pytest.raises(StoreError, match="shard index checksum"):
        reader.read_features(np.array([0]), reader.manifest.layer_names[0])
    assert verify_store(open_store(str(store)), progress=False).damaged_tiles == [0, 1, 2, 3]


def test_changed_pixels_with_a_recomputed_checksum_still_differ_from_their_hash(store):
    import google_crc32c

    file, offset, length = _chunk_span(store, layout.IMAGE, 2)
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    body = bytes(data[offset : offset + length - 4])
    data[offset + length - 4 : offset + length] = struct.pack("<I", google_crc32c.value(body))
    file.write_bytes(bytes(data))
    report = verify_store(open_store(str(store)), progress=False)
    assert [(d.array, d.tile) for d in report.damage] == [(layout.IMAGE, 2)]
    assert "hash" in report.damage[0].problem


def test_store_verify_command_passes_an_intact_store_and_names_damaged_tiles(store):
    result = subprocess.run([CELLGAP, "store", "verify", str(store), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["checksummed"] and report["chunks"] > 8 * 3
    _shard(store, layout.INSTANCES, 1).unlink()  # tiles 4..7 are done: their labels are gone
    file, offset, _ = _chunk_span(store, _layer(store), 1)
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))
    result = subprocess.run([CELLGAP, "store", "verify", str(store), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("tile 1 ") and "fails its checksum" in line for line in lines)
    assert sum(f"{layout.INSTANCES}: " in line and "missing" in line for line in lines) == 4
    assert "5 damaged tiles" in lines[-1]


def test_stores_made_before_per_tile_checksums_still_read_and_verify(tmp_path, intact, monkeypatch):
    from cellgap.featurestore.store import arrays

    monkeypatch.setattr(arrays, "tile_codecs", lambda spec: arrays.compressors_for(spec.codec))  # as before
    old = tmp_path / "old.zarr"
    run_extraction(ExtractConfig(dataset="synthetic:8,seed=3", store=str(old), shard_tiles=4, batch_size=4,
                                 encoder=EncoderSettings(name="convnext_atto", pretrained=False), progress=False))
    monkeypatch.undo()
    group = zarr.open_group(str(old), mode="r")
    assert not shard_layout(array_at(group, _layer(old))).checksummed
    name = open_store(str(old)).manifest.layer_names[0]
    assert np.array_equal(open_store(str(old)).read_features(np.arange(8), name),
                          open_store(str(intact)).read_features(np.arange(8), name))
    report = verify_store(open_store(str(old)), progress=False)
    assert report.ok and not report.checksummed

