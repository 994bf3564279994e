"""`cellgap bench gpu`: refuses to run without CUDA unless asked for a CPU smoke run, which exercises every path."""
from __future__ import annotations

import json

import pytest
import torch

from cellgap.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_says_so_in_one_line(capsys):
    assert main(["bench", "gpu"]) == 2
    assert capsys.readouterr().err == "cellgap: error: bench gpu needs a CUDA device (or --device cpu --tiles N for a smoke run)\n"
    assert main(["bench", "gpu", "--device", "cpu"]) == 2  # PanNuke's 7,901 tiles on a CPU: refused, not tried
    assert "smoke run: pass --tiles 64 or fewer" in capsys.readouterr().err


def test_a_cpu_smoke_run_writes_the_json_with_the_version(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "gpu", "--device", "cpu", "--tiles", "2", "--batch-size", "2", "--encoders", "convnext_atto",
                 "--dtypes", "int8", "--workers", "2", "--json", str(out)]) == 0
    assert "CPU smoke run: not a GPU result" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["smoke_run"] and result["cellgap_version"]
    [row] = result["extraction"]
    assert row["encoder"] == "convnext_atto" and row["dtype"] == "int8" and row["extract_tiles_per_s"] > 0
    assert 0 < row["extract_over_limit"] and result["postprocess"]["pool_tiles_per_s"] > 0
