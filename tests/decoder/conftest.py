"""Small stores and a trained run shared by the decoder tests (built once per session with the real commands)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cellgap.featurestore.encoders import EncoderSettings
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.job import run_extraction


def make_store(path: Path, encoder: str = "convnext_atto", tiles: int = 10, layers: str = "default", **options) -> Path:
    run_extraction(ExtractConfig(dataset=f"synthetic:{tiles},seed=1", store=str(path),
                                 encoder=EncoderSettings(name=encoder, pretrained=False, layers=layers), batch_size=4,
                                 shard_tiles=4, progress=False, **options))
    return path


@pytest.fixture(scope="session")
def conv_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("conv") / "conv.zarr")


@pytest.fixture(scope="session")
def vit_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("vit") / "vit.zarr", encoder="vit_tiny", tiles=6)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, conv_store) -> Path:
    from cellgap.decoder.training.config import TrainConfig
    from cellgap.decoder.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(store=str(conv_store), out=out, epochs=2, batch_size=4, progress=False))
    return out
