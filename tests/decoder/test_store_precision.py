"""`predict --store` reads only features of the precision the run was trained on."""
from __future__ import annotations

from cellgap.cli import main
from cellgap.featurestore.encoders import EncoderSettings
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.job import run_extraction
from cellgap.featurestore.store import open_store


def test_predict_refuses_a_store_of_another_precision(tmp_path, trained_run, conv_store, capsys):
    trained_on = open_store(str(conv_store)).manifest.encoder.precision
    assert trained_on == "fp32"  # extracted on a CPU with the default
    bf16 = tmp_path / "bf16.zarr"
    run_extraction(ExtractConfig(dataset="synthetic:2,seed=1", store=str(bf16), progress=False, shard_tiles=2,
                                 encoder=EncoderSettings(name="convnext_atto", pretrained=False, precision="bf16")))
    assert main(["predict", "--run", str(trained_run), "--store", str(bf16), "--split", "all",
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "holds features computed in bf16; the decoder was trained on fp32" in error
    assert not (tmp_path / "pred").exists()
