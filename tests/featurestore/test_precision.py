"""The encoder's compute precision: recorded in the manifest, part of the store's identity, refused when mixed."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import zarr

from cellgap.featurestore.encoders import EncoderSettings
from cellgap.featurestore.encoders.precision import resolve_precision
from cellgap.featurestore.errors import ManifestMismatchError
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.job import run_extraction
from cellgap.featurestore.store import open_store
from cellgap.featurestore.store.manifest import ATTRIBUTE

DATASET = "synthetic:4,seed=3"


def extract(store, precision: str = "auto", device: str = "cpu"):
    settings = EncoderSettings(name="convnext_atto", pretrained=False, precision=precision)
    return run_extraction(ExtractConfig(dataset=DATASET, store=str(store), encoder=settings, device=device,
                                        shard_tiles=2, batch_size=2, progress=False))


@pytest.fixture(scope="module")
def fp32_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32") / "s.zarr"
    extract(path)  # auto on a CPU
    return path


@pytest.fixture(scope="module")
def bf16_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("bf16") / "s.zarr"
    extract(path, precision="bf16")  # bf16 autocast runs on a CPU too
    return path


def forget_precision(store) -> None:
    """Make the manifest look as a cellgap before the field wrote it."""
    group = zarr.open_group(str(store), mode="r+")
    attributes = group.attrs[ATTRIBUTE]
    del attributes["encoder"]["precision"]
    group.attrs[ATTRIBUTE] = attributes


def test_auto_is_fp32_on_a_cpu_and_the_choice_otherwise():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16" and resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(ValueError, match="precision 'int4'"):
        resolve_precision("int4", "cpu")


def test_the_manifest_records_the_precision_and_store_info_shows_it(fp32_store, bf16_store, capsys):
    from cellgap.cli import main

    assert open_store(str(fp32_store)).manifest.encoder.precision == "fp32"
    assert open_store(str(bf16_store)).manifest.encoder.precision == "bf16"
    assert main(["store", "info", str(bf16_store)]) == 0
    assert "precision bf16 autocast" in capsys.readouterr().out


def test_bf16_features_are_not_the_fp32_ones(fp32_store, bf16_store):
    """The choice is applied, not only written down: bf16 features differ from fp32 by more than float16 rounding."""
    one, two = open_store(str(fp32_store)), open_store(str(bf16_store))
    indices = np.arange(one.n_tiles)
    layer = one.manifest.layer_names[-1]
    a, b = (s.read_features(indices, layer).astype(np.float32) for s in (one, two))
    relative = float(np.abs(a - b).mean() / np.abs(a).mean())
    assert 1e-3 < relative < 0.1


def test_resuming_with_another_precision_is_refused(bf16_store):
    with pytest.raises(ManifestMismatchError, match=r"computed in bf16; this run computes fp32; pass --precision bf16"):
        extract(bf16_store, precision="fp32")
    assert extract(bf16_store, precision="bf16").already_complete


def test_a_store_from_before_the_field_opens_as_unknown(tmp_path, fp32_store, capsys, caplog):
    from cellgap.cli import main
    from cellgap.featurestore.store.catalog import find_compatible
    from cellgap.featurestore.store.writer import open_or_create

    old = tmp_path / "stores" / "old.zarr"
    old.parent.mkdir()
    import shutil

    shutil.copytree(fp32_store, old)
    forget_precision(old)
    store = open_store(str(old))
    assert store.manifest.encoder.precision == "unknown"
    assert main(["store", "info", str(old)]) == 0
    assert "precision unknown (written before cellgap recorded it" in capsys.readouterr().out
    fp32 = open_store(str(fp32_store)).manifest
    with caplog.at_level(logging.WARNING):  # read by a decoder of fp32 features: allowed, and said
        open_store(str(old), expect_encoder=fp32.encoder)
    assert "precision unknown" in caplog.text
    assert find_compatible(old.parent, fp32) == old  # complete: reused as it is
    group = zarr.open_group(str(old), mode="r+")
    group["done"][0] = 0  # a partial old store: its next shards could be another precision than its first
    with pytest.raises(ManifestMismatchError, match="before cellgap recorded the encoder's precision"):
        open_or_create(str(old), fp32, [])
    assert find_compatible(old.parent, fp32) is None


def test_a_reader_of_fp32_features_refuses_bf16_ones(fp32_store, bf16_store):
    fp32 = open_store(str(fp32_store)).manifest.encoder
    with pytest.raises(ManifestMismatchError, match="computed in bf16; the decoder was trained on fp32"):
        open_store(str(bf16_store), expect_encoder=fp32)


@pytest.mark.gpu
def test_auto_extracts_bf16_on_cuda_and_differs_from_fp32(tmp_path):
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    extract(tmp_path / "auto.zarr", device="cuda")
    extract(tmp_path / "fp32.zarr", precision="fp32", device="cuda")
    auto, fp32 = open_store(str(tmp_path / "auto.zarr")), open_store(str(tmp_path / "fp32.zarr"))
    assert auto.manifest.encoder.precision == expected and fp32.manifest.encoder.precision == "fp32"
    layer = auto.manifest.layer_names[-1]
    indices = np.arange(auto.n_tiles)
    a, b = (s.read_features(indices, layer).astype(np.float32) for s in (auto, fp32))
    assert expected == "fp32" or not np.array_equal(a, b)
    with pytest.raises(ManifestMismatchError, match="computed in"):
        extract(tmp_path / "auto.zarr", precision="fp32" if expected != "fp32" else "bf16", device="cuda")
